# The compiled twin's C view of client.py (an augmenting .pxd: the .py is the reference and
# runs unchanged without Cython). ClientConnection becomes an extension type: the pump's reads of
# its own fields, of its scanner's and of the linked server connection's are loads at a fixed
# offset. Names are cimported under another name so that the module's own names stay Python
# objects (tests replace some of them).

cimport cython

from pgpool_proxy.net.endpoint cimport Endpoint
from pgpool_proxy.pool.backend cimport BackendConnection as _BackendConnection
from pgpool_proxy.protocol.buffer cimport RecvBuffer as _RecvBuffer
from pgpool_proxy.protocol.client_scan cimport ClientScanner as _ClientScanner

cdef class ClientConnection(Endpoint):
    cdef public object addr
    cdef public _BackendConnection backend
    cdef public object close_reason
    cdef public object database
    cdef public object distrust
    cdef public object extra_settings
    cdef public object idle_since
    cdef public object key_pid
    cdef public object key_secret
    cdef public object login
    cdef public object params
    cdef public object peer_channel
    cdef public object pinned
    cdef public object pool
    cdef public object probe_flags
    cdef public object probe_hex
    cdef public object probe_names
    cdef public object probe_stmts
    cdef public object probe_tries
    cdef public object release_on_idle
    cdef public object replay
    cdef public _ClientScanner scanner
    cdef public object server
    cdef public object settings_sig
    cdef public object startup_settings
    cdef public object state
    cdef public object stmts
    cdef public object unchecked_until
    cdef public object user
    cdef public object wait_since

    @cython.locals(
        rb=_RecvBuffer, scanner=_ClientScanner, backend=_BackendConnection, buf=bytearray,
        end=Py_ssize_t, run=Py_ssize_t, pos=Py_ssize_t, ev=int,
    )
    cpdef _pump(self)

    # What each transaction calls, as C calls (a Python subclass may still override them).
    cpdef to(self, new)
    cpdef _on_idle_data(self)
    cpdef backend_assigned(self, _BackendConnection backend)
    cpdef _link(self, _BackendConnection backend)
    cpdef _sync_flow(self, _BackendConnection backend)
    cpdef activate(self)
    cpdef backend_released(self, _BackendConnection backend)
