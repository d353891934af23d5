#!/usr/bin/env python3
"""A TCP proxy in front of the test registry that makes image pulls slow or stall.

    slow_registry.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT slow BYTES_PER_SECOND
    slow_registry.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT stall AFTER_BYTES

slow: every connection's answers trickle at BYTES_PER_SECOND (the pull makes steady
progress). stall: each connection forwards AFTER_BYTES of answers, then nothing more while
it stays open (the pull stops making progress). Prints "listening" once ready.
"""
import socket
import sys
import threading
import time

listen_port, up_host, up_port, mode, amount = (
    int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))


def pump(src, dst, limit):
    sent = 0
    try:
        while True:
            data = src.recv(16384 if limit else 65536)
            if not data:
                break
            if limit and mode == "stall" and sent + len(data) > amount:
                dst.sendall(data[: max(0, amount - sent)])
                while True:
                    time.sleep(3600)
            dst.sendall(data)
            sent += len(data)
            if limit and mode == "slow":
                time.sleep(len(data) / amount)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client):
    upstream = socket.create_connection((up_host, up_port))
    threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
    pump(upstream, client, True)


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", listen_port))
listener.listen(64)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
