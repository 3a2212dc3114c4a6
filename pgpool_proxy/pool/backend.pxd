# The compiled twin's C view of backend.py (an augmenting .pxd: the .py is the reference and
# runs unchanged without Cython). BackendConnection becomes an extension type: the pump's reads
# of its own fields and its scanner's are loads at a fixed offset. Names are cimported under
# another name so that the module's own names stay Python objects (tests replace some of them).

cimport cython

from pgpool_proxy.net.endpoint cimport Endpoint
from pgpool_proxy.protocol.buffer cimport RecvBuffer as _RecvBuffer
from pgpool_proxy.protocol.server_scan cimport BackendScanner as _BackendScanner

cdef class BackendConnection(Endpoint):
    cdef public object address
    cdef public object applied_sig
    cdef public object cancel_done
    cdef public object cancelling
    cdef public object checked_at
    cdef public object client
    cdef public object close_reason
    cdef public object created_at
    cdef public object done_key_pid
    cdef public object extra_keys
    cdef public object generation
    cdef public object idle_since
    cdef public object idle_tx_since
    cdef public object internal_errors
    cdef public object internal_pending
    cdef public object internal_rows
    cdef public object last_key_pid
    cdef public object last_user
    cdef public object leaving
    cdef public object linked_at
    cdef public bint mid_message
    cdef public object login_user
    cdef public object loop
    cdef public object on_internal_done
    cdef public object params
    cdef public object parked
    cdef public object pid
    cdef public object pool
    cdef public object rx_bytes
    cdef public object rx_mark
    cdef public _BackendScanner scanner
    cdef public object secret
    cdef public object silent_since
    cdef public object state
    cdef public object stmts
    cdef public object taint_owner
    cdef public object tx_status

    @cython.locals(
        rb=_RecvBuffer, scanner=_BackendScanner, buf=bytearray, start=Py_ssize_t,
        pos=Py_ssize_t, end=Py_ssize_t, ev=int,
    )
    cpdef _pump(self)

    # What each transaction calls, as C calls (a Python subclass may still override them).
    cpdef _to(self, new)
    cpdef link(self, client)
    cpdef hold(self)
    cpdef _idle_point(self, client, Py_ssize_t start, Py_ssize_t pos)
    cpdef release_if_done(self, client, Py_ssize_t pos)
    cpdef _write(self, Py_ssize_t start, Py_ssize_t pos)
    cpdef _flush(self, Py_ssize_t start, Py_ssize_t pos)
