# The compiled twin's C view of endpoint.py (an augmenting .pxd: the .py is the reference and
# runs unchanged without Cython). Endpoint becomes an extension type, so the connections' reads
# of their own fields (the receive buffer, the transport, the flow-control flags) are loads at a
# fixed offset, not attribute lookups by name.

from pgpool_proxy.protocol.buffer cimport RecvBuffer as _RecvBuffer

cdef class Endpoint:
    cdef public _RecvBuffer rbuf
    cdef public object transport
    cdef public bint reading_paused
    cdef public bint write_paused
    cdef public bint eof
    cdef public bint linger
    cdef public object _wakeup
    cdef public object _writable

    # Called across the link once or twice per transaction.
    cpdef pause_reading(self)
    cpdef resume_reading(self)
