#!/usr/bin/env python3
"""Sends one IPv6 router advertisement out of IFACE (a default router for 30 minutes, PREFIX/64 for
SLAAC), as a router on the link would: what a server's exit interface learns its address and default
route from. Usage: router_advert.py IFACE PREFIX"""
import socket
import struct
import sys

iface, prefix = sys.argv[1], sys.argv[2]
index = socket.if_nametoindex(iface)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
# Hosts accept only advertisements that no router forwarded (hop limit 255); the kernel fills the
# ICMPv6 checksum of a raw ICMPv6 socket.
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
# Type 134, code 0, checksum, hop limit 64, no flags, router lifetime 1800 s, reachable, retransmit.
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
# Prefix information: on-link and autonomous, valid 1 day, preferred 4 hours.
pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, prefix)
s.sendto(ra + pio, ("ff02::1", 0, 0, index))
