# The compiled twin's C view of server_scan.py (an augmenting .pxd: the .py is the reference and
# runs unchanged without Cython). The scan loop runs once per server frame: its header work, the
# scanner's fields and the type bytes it compares against become C.

cimport cython

cdef int B_COPY_IN, B_DATA_ROW, B_ERROR, B_NOTIFICATION, B_PARAMETER_STATUS, B_READY_FOR_QUERY
cdef bytes UNIT_STOP
cdef tuple TERMINATES
cdef Py_ssize_t MAX_BACKEND_FRAME

cdef class BackendScanner:
    cdef public bint copy_in
    cdef public int event
    cdef public bint internal
    cdef public Py_ssize_t need
    cdef public Py_ssize_t skip
    cdef public int status
    cdef public object units

    @cython.locals(skip=Py_ssize_t, t=int, length=Py_ssize_t, n=Py_ssize_t)
    cpdef Py_ssize_t scan(self, bytearray buf, Py_ssize_t pos, Py_ssize_t end) except -1
    cdef Py_ssize_t _need(self, Py_ssize_t pos, Py_ssize_t n)
