# The compiled twin's C view of buffer.py (an augmenting .pxd: buffer.py stays the reference and
# runs as written without Cython). RecvBuffer becomes an extension type with C fields, so the
# pumps' per-read reads of start/end cost a load, not an attribute lookup.

cdef class RecvBuffer:
    cdef public bytearray buf
    cdef public object view
    cdef public Py_ssize_t start
    cdef public Py_ssize_t end
    cdef public Py_ssize_t initial
    cdef public Py_ssize_t limit

    cpdef object get_buffer(self)
    cpdef bint is_full(self)
    cpdef consumed(self, Py_ssize_t pos)
    cpdef ensure_capacity(self, Py_ssize_t nbytes)
    cpdef detach(self)
    cpdef drop(self)
    cpdef Py_ssize_t pending(self)
