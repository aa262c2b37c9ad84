# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The per-frame and per-delivery work of a relay connection, compiled.

This is :mod:`switchboard.relay._purecore` in Cython, line for line in meaning:
reading websocket frames out of decrypted bytes, unmasking them, queueing
pre-framed messages per receiver and writing each receiver's queue once per
event-loop turn, and switching the chat and media frames whose headers repeat
the sender's last ones (``ChatLane``, ``MediaLane``). It exists because the
interpreter's cost per frame, not the kernel's or OpenSSL's, was what
separated the relay from the featureless reference relay
(docs/topics/performance.md). Policy (routing, rules, limits, the websocket
handshake and closing) stays in Python: a lane reads the same objects the
Python path reads and passes only what that path would pass without a word;
everything else it leaves to it.

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
from libc.string cimport memcmp, memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import asyncio
import contextvars
import logging

from websockets.protocol import State

from switchboard.core.meeting import MeetingState, Presence

__all__ = [
    "COMPILED",
    "READ_BUFFER",
    "ChatLane",
    "ConnectionCore",
    "Lane",
    "MediaLane",
    "Outbox",
    "binary_message",
    "fan_out",
    "fan_out_media",
]

COMPILED = True

log = logging.getLogger("switchboard.relay")

cdef object _get_running_loop = asyncio.get_running_loop
cdef object _OPEN = State.OPEN
cdef object _LIVE = MeetingState.LIVE
cdef object _HERE = Presence.HERE
cdef const char* _KEY = b"\xa3key"  # msgpack's "key"

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


cdef inline void _unmask_into(
    unsigned char* dst, const unsigned char* src, Py_ssize_t n, const unsigned char* key, Py_ssize_t skew
) noexcept:
    # dst[i] = src[i] ^ key[(i + skew) & 3]: skew is where src starts in the masked message.
    cdef unsigned char k[4]
    cdef uint32_t k32
    cdef uint64_t k64, w
    cdef Py_ssize_t i = 0
    for i in range(4):
        k[i] = key[(i + skew) & 3]
    memcpy(&k32, k, 4)
    k64 = (<uint64_t>k32 << 32) | k32  # the key twice, in memory order either way
    i = 0
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= k64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ k[i & 3]
        i += 1


cdef inline bytes _unmask(const unsigned char* src, Py_ssize_t n, const unsigned char* key):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _unmask_into(<unsigned char*>PyBytes_AS_STRING(out), src, n, key, 0)
    return out


cdef inline Py_ssize_t _frame_head(unsigned char* out, Py_ssize_t n) noexcept:
    # The header of an unmasked binary frame of n bytes; its length.
    cdef int i
    out[0] = 0x82
    if n < 126:
        out[1] = <unsigned char>n
        return 2
    if n < 65536:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>(n & 0xFF)
        return 4
    out[1] = 127
    for i in range(8):
        out[2 + i] = <unsigned char>((<uint64_t>n >> (56 - 8 * i)) & 0xFF)
    return 10


def binary_message(*parts):
    """One unmasked, unfragmented binary websocket frame holding ``parts``, concatenated."""
    cdef Py_ssize_t n = 0, at, total
    cdef Py_buffer view
    cdef unsigned char* out
    cdef bytes message
    for part in parts:
        n += len(part)
    total = (2 if n < 126 else 4 if n < 65536 else 10) + n
    message = PyBytes_FromStringAndSize(NULL, total)
    out = <unsigned char*>PyBytes_AS_STRING(message)
    at = _frame_head(out, n)
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
    cdef object _context  # see _purecore.Outbox

    def __cinit__(self):
        self._dirty = []
        self._scheduled = False
        self._flush = self.flush
        self._context = contextvars.Context()

    cdef inline int _enlist(self, ConnectionCore conn) except -1:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            _get_running_loop().call_soon(self._flush, context=self._context)
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

    cdef object _transport
    # The transport class's methods a flush calls, called with the transport: no
    # lookup per receiver per turn, and no bound-method object per connection for
    # the collector to walk (write_nocheck where offered: no thread check).
    cdef object _write_out
    cdef object _is_closing
    cdef object _unsent_now
    cdef public Py_ssize_t unsent
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
    cdef public object participant
    cdef public tuple lanes

    def __cinit__(self, *args, **kwargs):
        self._pending = []
        self.lanes = ()
        self.last_rx = _monotonic()

    @property
    def transport(self):
        """The connection's transport; None before it is made and once it is lost."""
        return self._transport

    @transport.setter
    def transport(self, value):
        self._transport = value
        if value is None:
            self._write_out = self._is_closing = self._unsent_now = None
        else:
            kind = type(value)
            self._write_out = getattr(kind, "write_nocheck", kind.write)
            self._is_closing = kind.is_closing
            self._unsent_now = kind.get_write_buffer_size
        self.unsent = 0

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
        if nbytes == _READ_SIZE:
            self._read_cut_short()

    def _read_cut_short(self):
        """The transport stopped reading for this turn: read on soon (see ``_purecore``)."""
        retry = getattr(self.transport, "_retry_ssl_read", None)
        if retry is not None:
            _get_running_loop().call_soon(retry)

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
                if not (self.lanes and self._take(buf + start, stop - start, buf + mask_at)):
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

    cdef int _take(self, const unsigned char* src, Py_ssize_t n, const unsigned char* key) except -1:
        # Whether one of this sender's lanes switched the masked message at src.
        cdef Lane lane
        for lane in self.lanes:
            try:
                if lane._take(self, src, n, key):
                    return 1
            except Exception:
                self._switch_failed()
                return 1
        return 0

    def _take_message(self, data):
        """Offer one unmasked binary message to this sender's lanes (tests)."""
        cdef Py_buffer view
        cdef unsigned char zero[4]
        zero[0] = zero[1] = zero[2] = zero[3] = 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return bool(self.lanes and self._take(<const unsigned char*>view.buf, view.len, zero))
        finally:
            PyBuffer_Release(&view)

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
        transport = self._transport
        if transport is None or self._is_closing(transport):
            pending.clear()
            self.pending_bytes = 0
            return 0
        self._write_out(transport, pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()
        self.pending_bytes = 0
        self.unsent = self._unsent_now(transport)
        if self.unsent > self.write_limit:
            self._too_slow()
        return 0

    def flush_pending(self):
        """Write this turn's frames as one buffer: one TLS record, one syscall."""
        self._flush_pending()


cdef Py_ssize_t _fan_out(dict conns, long me, bytes message) except -1:
    cdef Py_ssize_t n = 0
    cdef ConnectionCore conn
    for pid, other in conns.items():
        if <long>pid != me:
            conn = <ConnectionCore?>other
            if conn._write(message):
                n += 1
    return n


def fan_out(dict conns not None, long me, bytes message not None):
    """Queue ``message`` for every connection in ``conns`` but ``me``'s; how many took it."""
    return _fan_out(conns, me, message)


cdef int _media_fan_out(
    dict conns,
    long me,
    object track,
    object m,
    bint key,
    bint keyed,
    Py_ssize_t threshold,
    tuple stream,
    bytes message,
    Py_ssize_t* counts,
) except -1:
    # counts[0] += deliveries, counts[1] += drops; 1 if a keyframe should be asked for.
    cdef ConnectionCore other
    cdef Py_ssize_t backlog
    cdef int ask = 0
    for pid, obj in conns.items():
        if <long>pid == me:
            continue
        other = <ConnectionCore?>obj
        if not other.open:
            continue
        receiver = other.participant
        if receiver is None:
            continue
        if (receiver.media_off or receiver.unsubscribed) and not receiver.wants(me, track, m):
            continue
        backlog = other.pending_bytes
        if other.unsent:  # else the transport holds nothing: it only grows by a write
            if other._transport is not None:
                other.unsent = other._unsent_now(other._transport)
                backlog += other.unsent
        waiting = receiver.awaiting_key
        if keyed and waiting and stream in waiting:
            if not key or backlog > threshold:
                counts[1] += 1
                continue
            waiting.discard(stream)
        elif backlog > threshold:
            counts[1] += 1
            if keyed:
                if waiting is None:
                    waiting = set()
                    receiver.awaiting_key = waiting
                waiting.add(stream)
                ask = 1
            continue
        if other._write(message):
            counts[0] += 1
    return ask


def fan_out_media(
    dict conns not None,
    long me,
    track,
    m,
    bint key,
    bint keyed,
    Py_ssize_t threshold,
    tuple stream not None,
    bytes message not None,
):
    """Queue a media frame for every subscribed receiver in ``conns`` but ``me``, by the drop
    policy (see ``_purecore.fan_out_media``); ``(deliveries, dropped, ask_keyframe)``."""
    cdef Py_ssize_t counts[2]
    counts[0] = counts[1] = 0
    ask = _media_fan_out(conns, me, track, m, key, keyed, threshold, stream, message, counts)
    return counts[0], counts[1], ask == 1


cdef class Lane:
    """What every lane decides as ``Meeting.route`` would (see ``_purecore.Lane``)."""

    cdef readonly long pid
    cdef object _kind_name
    cdef object _feature
    cdef object _clock
    cdef object _allows
    cdef object _role
    cdef object _webinar
    cdef object _rate_meter
    cdef object _bucket
    cdef double _rate
    cdef double _burst
    cdef Py_ssize_t _max_bytes
    cdef object _meter
    cdef object _use
    cdef double _started
    cdef object _now

    def __init__(self, *, long pid, kind_name, feature, clock, allows):
        self.pid = pid
        self._kind_name = kind_name
        self._feature = feature
        self._clock = clock
        self._allows = allows

    cdef int _take(
        self, ConnectionCore conn, const unsigned char* src, Py_ssize_t n, const unsigned char* mask
    ) except -1:
        return 0

    cdef inline int _admit(self, object sender, object meeting) except -1:
        # The route's checks that change nothing: the meeting, presence, the rules table.
        if meeting.state is not _LIVE or sender.presence is not _HERE:
            return 0
        role = sender.role
        webinar = meeting.webinar
        if role is not self._role or webinar is not self._webinar:
            if not self._allows(role, webinar):
                return 0
            self._role = role
            self._webinar = webinar
        return 1

    cdef inline int _spend(self, object sender, Py_ssize_t nbytes) except -1:
        # RateMeter.admit's rule for a frame it lets through; 0 for one it would refuse.
        cdef double now, tokens
        rate_meter = sender.rate
        if rate_meter is not self._rate_meter:
            bucket = rate_meter.bucket(self._kind_name)
            if bucket is None:
                return 0
            limit = bucket.limit
            self._rate = limit.rate
            self._burst = limit.burst
            self._max_bytes = limit.max_bytes
            self._bucket = bucket
            self._rate_meter = rate_meter
        if self._max_bytes and nbytes > self._max_bytes:
            return 0
        bucket = self._bucket
        now_obj = self._clock()
        now = now_obj
        tokens = <double>bucket.tokens + (now - <double>bucket.at) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            return 0
        bucket.tokens = tokens - 1.0
        bucket.at = now_obj
        self._now = now_obj
        return 1

    cdef inline int _count(
        self, object meeting, Py_ssize_t nbytes, Py_ssize_t deliveries, Py_ssize_t dropped
    ) except -1:
        # Meeting.switched: the record's counters of this feature.
        now_obj = self._now
        meter = meeting.meter
        if meter is not self._meter:
            self._use = meter.usage(self._feature, now_obj)
            self._started = meter.started_mono
            self._meter = meter
        use = self._use
        use.frames += 1
        use.bytes += nbytes
        use.deliveries += deliveries
        use.dropped += dropped
        use.last_use = <double>now_obj - self._started
        meeting.last_activity = now_obj
        return 0


cdef class ChatLane(Lane):
    """A sender's chat to everyone under one header, switched here (see ``_purecore.ChatLane``)."""

    cdef readonly bytes prefix
    cdef readonly bytes head

    def __init__(self, bytes prefix not None, bytes head not None, **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix
        self.head = head

    cdef int _take(
        self, ConnectionCore conn, const unsigned char* src, Py_ssize_t n, const unsigned char* mask
    ) except -1:
        cdef Py_ssize_t plen = len(self.prefix), hlen = len(self.head), nbytes, body, w, i
        cdef const unsigned char* prefix = <const unsigned char*>PyBytes_AS_STRING(self.prefix)
        cdef bytes message
        cdef unsigned char* out
        if n < plen:
            return 0
        for i in range(plen):
            if src[i] ^ mask[i & 3] != prefix[i]:
                return 0
        nbytes = n - plen
        room = (<object>conn).room
        sender = conn.participant
        if sender is None or room is None:
            return 0
        meeting = room.meeting
        if not self._admit(sender, meeting) or not self._spend(sender, nbytes):
            return 0
        body = hlen + nbytes
        message = PyBytes_FromStringAndSize(NULL, (2 if body < 126 else 4 if body < 65536 else 10) + body)
        out = <unsigned char*>PyBytes_AS_STRING(message)
        w = _frame_head(out, body)
        memcpy(out + w, PyBytes_AS_STRING(self.head), hlen)
        _unmask_into(out + w + hlen, src + plen, nbytes, mask, plen)
        self._count(meeting, nbytes, _fan_out(room.conns, self.pid, message), 0)
        return 1


cdef class MediaLane(Lane):
    """One sender's media track whose headers have the SDK's layout, switched here.

    See ``_purecore.MediaLane``: the same decisions, read from the same objects,
    without the interpreter. The payload is unmasked straight into the frame that
    goes out.
    """

    cdef readonly object layout
    cdef bytes _prefix
    cdef bytes _out_prefix
    cdef readonly object track
    cdef readonly object m
    cdef object _media
    cdef bint _keyed
    cdef Py_ssize_t _threshold
    cdef readonly tuple stream

    def __init__(self, layout, *, media, bint keyed, Py_ssize_t threshold, **kwargs):
        super().__init__(**kwargs)
        if len(layout.prefix) > 64 or len(layout.out_prefix) > 64:
            raise ValueError("a media header layout longer than any the SDK writes")
        self.layout = layout
        self._prefix = layout.prefix
        self._out_prefix = layout.out_prefix
        self.track = layout.track
        self.m = layout.m
        self._media = media
        self._keyed = keyed
        self._threshold = threshold
        self.stream = (self.pid, layout.track)

    cdef int _take(
        self, ConnectionCore conn, const unsigned char* src, Py_ssize_t n, const unsigned char* mask
    ) except -1:
        cdef unsigned char head[80]
        cdef Py_ssize_t plen = len(self._prefix), olen = len(self._out_prefix)
        cdef Py_ssize_t hn, at, i, nbytes, seqlen, body, total, w
        cdef unsigned long seq
        cdef unsigned char first, flag
        cdef bytes message
        cdef unsigned char* out
        cdef Py_ssize_t counts[2]
        cdef int ask
        # The header, unmasked on the stack: the prefix, 'seq', then 'key'.
        hn = plen + 10 if plen + 10 < n else n
        for i in range(hn):
            head[i] = src[i] ^ mask[i & 3]
        if hn < plen + 6 or memcmp(head, PyBytes_AS_STRING(self._prefix), plen) != 0:
            return 0
        at = plen
        first = head[at]
        if first < 0x80:
            seq = first
            at += 1
        elif first == 0xCD:
            seq = (<unsigned long>head[at + 1] << 8) | head[at + 2]
            at += 3
        elif first == 0xCE:
            seq = (
                (<unsigned long>head[at + 1] << 24) | (<unsigned long>head[at + 2] << 16)
                | (<unsigned long>head[at + 3] << 8) | head[at + 4]
            )
            at += 5
        elif first == 0xCC:
            seq = head[at + 1]
            at += 2
        else:
            return 0
        if at + 5 > hn or memcmp(head + at, _KEY, 4) != 0:
            return 0
        flag = head[at + 4]
        if flag != 0xC2 and flag != 0xC3:
            return 0
        at += 5
        nbytes = n - at
        # Meeting.route's decisions for a media frame to everyone; anything but a
        # plain yes goes to the Python path, which decides it again and answers.
        room = (<object>conn).room
        sender = conn.participant
        if sender is None or room is None:
            return 0
        meeting = room.meeting
        if not self._admit(sender, meeting):
            return 0
        if (<dict?>sender.tracks).get(self.track) is not self._media:
            return 0
        if not self._spend(sender, nbytes):
            return 0
        muted = meeting.muted
        if muted and self.stream in muted:
            return 1  # a muted track: dropped on purpose, not switched
        # The frame that goes out: forwarded header, 'seq' in its shortest form, payload.
        seqlen = 1 if seq < 0x80 else 2 if seq < 0x100 else 3 if seq < 0x10000 else 5
        body = olen + seqlen + 5 + nbytes
        total = (2 if body < 126 else 4 if body < 65536 else 10) + body
        message = PyBytes_FromStringAndSize(NULL, total)
        out = <unsigned char*>PyBytes_AS_STRING(message)
        w = _frame_head(out, body)
        memcpy(out + w, PyBytes_AS_STRING(self._out_prefix), olen)
        w += olen
        if seqlen == 1:
            out[w] = <unsigned char>seq
        elif seqlen == 2:
            out[w] = 0xCC
            out[w + 1] = <unsigned char>seq
        elif seqlen == 3:
            out[w] = 0xCD
            out[w + 1] = <unsigned char>(seq >> 8)
            out[w + 2] = <unsigned char>(seq & 0xFF)
        else:
            out[w] = 0xCE
            for i in range(4):
                out[w + 1 + i] = <unsigned char>((seq >> (24 - 8 * i)) & 0xFF)
        w += seqlen
        memcpy(out + w, _KEY, 4)
        out[w + 4] = flag
        w += 5
        _unmask_into(out + w, src + at, nbytes, mask, at)
        counts[0] = counts[1] = 0
        ask = _media_fan_out(
            room.conns, self.pid, self.track, self.m, flag == 0xC3, self._keyed,
            self._threshold, self.stream, message, counts,
        )
        self._count(meeting, nbytes, counts[0], counts[1])
        if ask and meeting.keyframe_due(self.pid, self.track, self._now):
            (<object>conn).send_control("keyframe", track=self.track)
        return 1
