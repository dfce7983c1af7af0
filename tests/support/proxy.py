"""A TCP proxy on 127.0.0.1 that a test cuts and restores: a database, Redis or S3 going away."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.servers import free_port


class CuttableProxy:
    """127.0.0.1:port forwarding to upstream, until cut: "refuse" (nothing listens, live connections
    dropped) or "hang" (live connections dropped, new ones accepted and never answered)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.mode = "forward"
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._held: set[socket.socket] = set()
        self._listener: tuple[threading.Thread, threading.Event] | None = None

    def listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(0.1)
        stop = threading.Event()
        thread = threading.Thread(target=self._accept, args=(listener, stop), daemon=True)
        thread.start()
        self._listener = (thread, stop)

    def cut(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            self._stop_listening()
        self._close(self._live)

    def restore(self) -> None:
        self.mode = "forward"
        self._close(self._held)
        if self._listener is None:
            self.listen()

    def stop(self) -> None:
        self._stop_listening()
        self._close(self._live)
        self._close(self._held)

    def _stop_listening(self) -> None:
        if self._listener:
            thread, stop = self._listener
            stop.set()
            thread.join()
            self._listener = None

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                if self.mode == "hang":
                    with self._lock:
                        self._held.add(client)
                    continue
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._live.update((client, upstream))
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        self._close({source, target})

    def _close(self, sockets: set[socket.socket]) -> None:
        with self._lock:
            doomed = list(sockets)
            self._live.difference_update(doomed)
            self._held.difference_update(doomed)
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); close() alone does not
            sock.close()
