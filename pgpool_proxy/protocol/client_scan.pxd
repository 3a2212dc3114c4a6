# The compiled twin's C view of client_scan.py (an augmenting .pxd: the .py is the reference and
# runs unchanged without Cython). The scan loop runs once per client frame: its header work, the
# scanner's counters and the type bytes it compares against become C. Fields that hold Python
# objects stay objects: statements, names and reply units are looked at only off the common path.

cimport cython

cdef int F_BIND, F_CLOSE, F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL, F_DESCRIBE, F_EXECUTE
cdef int F_FLUSH, F_FUNCTION_CALL, F_PARSE, F_QUERY, F_SYNC, F_TERMINATE
cdef int _S

cdef class ClientScanner:
    cdef public bint copy_in
    cdef public object dirty
    cdef public int event
    cdef public Py_ssize_t max_len
    cdef public object named_flags
    cdef public object names
    cdef public Py_ssize_t need
    cdef public bint opaque_binds
    cdef public object parse_flags
    cdef public Py_ssize_t pending
    cdef public bint rename
    cdef public Py_ssize_t skip
    cdef public Py_ssize_t syncs
    cdef public Py_ssize_t syncs_since_execute
    cdef public bint terminated
    cdef public object units
    cdef public object unnamed
    cdef public Py_ssize_t unnamed_drops
    cdef public object unnamed_fifo
    cdef public object unnamed_flags
    cdef public object unnamed_names
    cdef public bint unnamed_here
    cdef public bint unsynced

    @cython.locals(
        skip=Py_ssize_t, max_len=Py_ssize_t, t=int, length=Py_ssize_t, n=Py_ssize_t,
        avail=Py_ssize_t, stop=Py_ssize_t, first=bint,
    )
    cpdef Py_ssize_t scan(self, bytearray buf, Py_ssize_t pos, Py_ssize_t end) except -1
    cdef bint _repeat_unnamed(self, bytearray buf, Py_ssize_t pos, Py_ssize_t n) except -1
