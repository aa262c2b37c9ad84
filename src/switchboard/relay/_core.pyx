# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The per-frame and per-delivery work of a relay connection, compiled.

This is :mod:`switchboard.relay._purecore` in Cython, line for line in meaning:
reading websocket frames out of decrypted bytes, unmasking them, queueing
pre-framed messages per receiver and writing each receiver's queue once per
event-loop turn. It exists because the interpreter's cost per frame, not the
kernel's or OpenSSL's, was what separated the relay from the featureless
reference relay (docs/topics/performance.md). Policy (routing, rules, limits,
the websocket handshake and closing) stays in Python; what is here has no
decisions in it beyond the framing rules of RFC 6455.

Both implementations are tested against each other (tests/test_core.py) and
the relay's end-to-end suites run on each.
"""

from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_FromStringAndSize,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import asyncio
import logging

from websockets.protocol import State

__all__ = ["COMPILED", "READ_BUFFER", "ConnectionCore", "Outbox", "binary_message", "fan_out"]

COMPILED = True

log = logging.getLogger("switchboard.relay")

cdef object _get_running_loop = asyncio.get_running_loop
cdef object _OPEN = State.OPEN

cdef Py_ssize_t _READ_SIZE = 256 * 1024
cdef bytearray _READ = bytearray(_READ_SIZE)
READ_BUFFER = memoryview(_READ)
"""Where every connection's transport decrypts into; exported, so never resized."""
cdef unsigned char* _READ_PTR = <unsigned char*>PyByteArray_AS_STRING(_READ)


cdef inline double _monotonic() noexcept:
    # time.monotonic() reads the same clock (CLOCK_MONOTONIC) on Linux.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline bytes _unmask(const unsigned char* src, Py_ssize_t n, const unsigned char* key):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    cdef uint32_t k32
    cdef uint64_t k64, w
    cdef Py_ssize_t i = 0
    memcpy(&k32, key, 4)
    k64 = (<uint64_t>k32 << 32) | k32  # the key twice, in memory order either way
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 3]
        i += 1
    return out


def binary_message(*parts):
    """One unmasked, unfragmented binary websocket frame holding ``parts``, concatenated."""
    cdef Py_ssize_t n = 0, at, total
    cdef Py_buffer view
    cdef unsigned char* out
    cdef bytes message
    cdef int i
    for part in parts:
        n += len(part)
    if n < 126:
        at = 2
    elif n < 65536:
        at = 4
    else:
        at = 10
    total = at + n
    message = PyBytes_FromStringAndSize(NULL, total)
    out = <unsigned char*>PyBytes_AS_STRING(message)
    out[0] = 0x82
    if at == 2:
        out[1] = <unsigned char>n
    elif at == 4:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>(n & 0xFF)
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <unsigned char>((<uint64_t>n >> (56 - 8 * i)) & 0xFF)
    for part in parts:
        PyObject_GetBuffer(part, &view, PyBUF_SIMPLE)
        try:
            if at + view.len > total:  # a part grew between the two passes
                raise ValueError("a part changed size while being framed")
            memcpy(out + at, view.buf, view.len)
            at += view.len
        finally:
            PyBuffer_Release(&view)
    return message


cdef class Outbox:
    """Connections with frames waiting for the end of this event-loop turn.

    The first frame a connection gets in a turn enlists it; one callback at the
    end of the turn writes each enlisted connection's frames as one buffer.
    """

    cdef list _dirty
    cdef bint _scheduled
    cdef object _flush  # self.flush, bound once rather than once per turn

    def __cinit__(self):
        self._dirty = []
        self._scheduled = False
        self._flush = self.flush

    cdef inline int _enlist(self, ConnectionCore conn) except -1:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            _get_running_loop().call_soon(self._flush)
        return 0

    def enlist(self, ConnectionCore conn not None):
        """``conn`` has its first pending frame of this turn."""
        self._enlist(conn)

    def flush(self):
        """Write every enlisted connection's pending frames."""
        cdef list dirty = self._dirty
        cdef ConnectionCore conn
        self._scheduled = False
        self._dirty = []
        for conn in dirty:
            try:
                conn._flush_pending()
            except Exception:  # one broken transport must not strand the others' frames
                log.exception("writing to a connection failed; closing it")
                conn.abort()


cdef class ConnectionCore:
    """The hot state and hot methods of a relay connection (see ``RelayConnection``)."""

    cdef public object transport
    cdef public object proto
    cdef public bint open
    cdef public Py_ssize_t pending_bytes
    cdef public Py_ssize_t write_limit
    cdef public Py_ssize_t max_size
    cdef public double last_rx
    cdef public bint _direct
    cdef public object _partial
    cdef public list _pending
    cdef public Outbox _outbox

    def __cinit__(self, *args, **kwargs):
        self._pending = []
        self.last_rx = _monotonic()

    # reading

    def data_received(self, data):
        cdef Py_buffer view
        self.last_rx = _monotonic()
        if not self._direct:
            self._receive(data)
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def get_buffer(self, sizehint):
        """One read buffer shared by every connection of the process (see ``_purecore``)."""
        return READ_BUFFER

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` of plaintext are in the shared buffer: parse them now."""
        if nbytes < 0 or nbytes > _READ_SIZE:
            raise ValueError(f"the transport reported {nbytes} bytes in a {_READ_SIZE}-byte buffer")
        self.last_rx = _monotonic()
        if self._direct:
            self._feed(_READ_PTR, nbytes)
        else:
            self._receive(PyBytes_FromStringAndSize(<char*>_READ_PTR, nbytes))

    def _read_frames(self, data):
        """Read the frames in ``data`` (see ``_purecore.ConnectionCore._read_frames``)."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _feed(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef object partial = self._partial
        cdef const unsigned char* buf
        cdef Py_ssize_t end, old, at = 0, mask_at, start, stop
        cdef unsigned long long length
        cdef unsigned char first, second
        cdef int i
        if partial is not None:
            old = PyByteArray_GET_SIZE(partial)
            PyByteArray_Resize(partial, old + n)
            memcpy(PyByteArray_AS_STRING(partial) + old, data, n)
            buf = <const unsigned char*>PyByteArray_AS_STRING(partial)
            end = old + n
        else:
            buf = data
            end = n
        while end - at >= 2:
            first = buf[at]
            second = buf[at + 1]
            length = second & 0x7F
            if length < 126:
                mask_at = at + 2
            elif length == 126:
                mask_at = at + 4
                if mask_at > end:
                    break
                length = (<unsigned long long>buf[at + 2] << 8) | buf[at + 3]
            else:
                mask_at = at + 10
                if mask_at > end:
                    break
                length = 0
                for i in range(8):
                    length = (length << 8) | buf[at + 2 + i]
            if (
                not second & 0x80
                or first & 0x70
                or length > <unsigned long long>self.max_size
                or not self.open
            ):
                self._hand_over(PyBytes_FromStringAndSize(<const char*>buf + at, end - at))
                return 0
            start = mask_at + 4
            stop = start + <Py_ssize_t>length
            if stop > end:
                break
            if first == 0x82 and self.proto.current_size is None:
                self._on_message(_unmask(buf + start, stop - start, buf + mask_at))
            else:
                self._receive(PyBytes_FromStringAndSize(<const char*>buf + at, stop - at))
                if self.proto.state is not _OPEN:
                    self._hand_over(PyBytes_FromStringAndSize(<const char*>buf + stop, end - stop))
                    return 0
            at = stop
        if at == end:
            self._partial = None
        elif partial is not None:
            # What is left moves to the front; nothing else holds this buffer.
            memmove(PyByteArray_AS_STRING(partial), PyByteArray_AS_STRING(partial) + at, end - at)
            PyByteArray_Resize(partial, end - at)
        else:
            self._partial = PyByteArray_FromStringAndSize(<const char*>buf + at, end - at)
        return 0

    # writing

    cdef inline bint _write(self, bytes message) except -1:
        if not self.open:
            return False
        cdef list pending = self._pending
        if not pending:
            self._outbox._enlist(self)  # once per receiver per turn
        pending.append(message)
        self.pending_bytes += len(message)
        return True

    def write_frame(self, bytes message not None):
        """Queue one pre-framed message; it leaves at the end of this event-loop turn."""
        return self._write(message)

    cdef int _flush_pending(self) except -1:
        cdef list pending = self._pending
        if not pending:
            return 0
        transport = self.transport
        if transport is None or transport.is_closing():
            pending.clear()
            self.pending_bytes = 0
            return 0
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()
        self.pending_bytes = 0
        if transport.get_write_buffer_size() > self.write_limit:
            self._too_slow()
        return 0

    def flush_pending(self):
        """Write this turn's frames as one buffer: one TLS record, one syscall."""
        self._flush_pending()


def fan_out(dict conns not None, long me, bytes message not None):
    """Queue ``message`` for every connection in ``conns`` but ``me``'s; how many took it."""
    cdef Py_ssize_t n = 0
    cdef ConnectionCore conn
    for pid, other in conns.items():
        if <long>pid != me:
            conn = <ConnectionCore?>other
            if conn._write(message):
                n += 1
    return n
