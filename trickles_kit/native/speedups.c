/* trickles_kit.native._speedups: the optional compiled helpers.
 *
 * Each function has a pure-Python twin with the same signature and results
 * (wire/segment.py: ones_sum, checksum; native/fallback.py: recv_many, send_many,
 * record_offsets);
 * trickles_kit/native/__init__.py chooses one set. Nothing here changes a byte on the
 * wire: the TCP checksum is the same number, the batched calls hand over the same datagrams.
 *
 * Built by setup.py when a C compiler and Python's headers are present (optional=True:
 * a failed build is skipped and the package stays pure Python).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Sum of the big-endian 16-bit words of buf, aligned from its END (as int.from_bytes reads
 * an odd-length buffer: the first byte stands alone as the low byte of the top word). */
static uint64_t word_sum(const unsigned char *p, Py_ssize_t n)
{
    uint64_t s = 0;
    if (n & 1) {
        s = p[0];
        p++;
        n--;
    }
    /* 32-bit big-endian loads: each adds two words at once, folded below */
    while (n >= 8) {
        uint32_t a = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        uint32_t b = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
        s += (uint64_t)a + b;
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        s += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        n -= 2;
    }
    return s;
}

/* x mod 0xFFFF (the value int.from_bytes(data, "big") % 0xFFFF gives: 0..0xFFFE) */
static unsigned int mod_ffff(uint64_t x)
{
    while (x >> 16)
        x = (x & 0xFFFF) + (x >> 16);
    return x == 0xFFFF ? 0 : (unsigned int)x;
}

static PyObject *ones_sum(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t s = word_sum(b.buf, b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(mod_ffff(s));
}

static PyObject *checksum(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer src, dst, seg;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "checksum(src_ip, dst_ip, segment)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &seg, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    if (src.len != 4 || dst.len != 4 || seg.len > 0xFFFF) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyBuffer_Release(&seg);
        /* struct.error in the pure twin; both are errors of the caller's contract */
        PyErr_SetString(PyExc_ValueError, "4-byte addresses and a segment under 64 KiB");
        return NULL;
    }
    uint64_t s = word_sum(src.buf, 4) + word_sum(dst.buf, 4) + 6 + (uint64_t)seg.len;
    const unsigned char *p = seg.buf;
    Py_ssize_t n = seg.len;
    if (n & 1) /* the segment is padded with a zero byte at its end */
        s += (uint64_t)p[n - 1] << 8;
    s += word_sum(p, n & ~(Py_ssize_t)1);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&seg);
    unsigned int v = mod_ffff(s);
    return PyLong_FromUnsignedLong((~(v ? v : 0xFFFF)) & 0xFFFF);
}

/* ---- batched datagram I/O (Linux recvmmsg/sendmmsg) ---- */

#define MAX_BATCH 256
#define SLOT 65536 /* a whole IPv4 datagram: nothing is ever truncated */

static unsigned char *rx_area; /* MAX_BATCH slots, allocated once; pages touched as used */

/* UDP GRO (a socket with UDP_GRO set): one read may hold several datagrams of one sender,
 * all gso_size bytes but the last; the kernel says gso_size in a control message */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define CTRL_SPACE CMSG_SPACE(sizeof(int))
static unsigned char rx_ctrl[MAX_BATCH][CTRL_SPACE];

static int gro_size(struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
            && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof(v));
            return v;
        }
    }
    return 0;
}

static int addr_from_tuple(PyObject *addr, struct sockaddr_in *sa)
{
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port))
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        PyErr_Format(PyExc_OSError, "not an IPv4 address: %s", host);
        return -1;
    }
    return 0;
}

/* recv_many(sock, limit) -> [(data, src_ip 4 bytes, src_port)], what the socket holds now: up
 * to `limit` reads, each one datagram or (UDP_GRO) several of one sender, returned apart */
static PyObject *recv_many(PyObject *self, PyObject *args)
{
    PyObject *sockobj;
    int limit;
    if (!PyArg_ParseTuple(args, "Oi", &sockobj, &limit))
        return NULL;
    int fd = PyObject_AsFileDescriptor(sockobj);
    if (fd < 0)
        return NULL;
    if (limit > MAX_BATCH)
        limit = MAX_BATCH;
    PyObject *out = PyList_New(0);
    if (out == NULL || limit <= 0)
        return out;
    if (rx_area == NULL && (rx_area = malloc((size_t)MAX_BATCH * SLOT)) == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_in names[MAX_BATCH];
    int tries = limit; /* ECONNREFUSED (an ICMP for an earlier send) uses up one read, as in
                        * the one-by-one loop */
    while (limit > 0) {
        memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)limit);
        for (int i = 0; i < limit; i++) {
            iov[i].iov_base = rx_area + (size_t)i * SLOT;
            iov[i].iov_len = SLOT;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
            msgs[i].msg_hdr.msg_control = rx_ctrl[i];
            msgs[i].msg_hdr.msg_controllen = CTRL_SPACE;
        }
        int r = recvmmsg(fd, msgs, (unsigned int)limit, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            if (errno == ECONNREFUSED && --tries > 0) {
                limit--;
                continue;
            }
            if (errno == ECONNREFUSED)
                break;
            Py_DECREF(out);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < r; i++) {
            size_t len = msgs[i].msg_len;
            int g = gro_size(&msgs[i].msg_hdr);
            size_t step = (g > 0 && (size_t)g < len) ? (size_t)g : len;
            size_t off = 0;
            do { /* one item per datagram, a coalesced read cut at every gso_size bytes */
                size_t n = len - off < step ? len - off : step;
                PyObject *item = Py_BuildValue(
                    "(y#y#i)", (const char *)iov[i].iov_base + off, (Py_ssize_t)n,
                    (const char *)&names[i].sin_addr, (Py_ssize_t)4,
                    (int)ntohs(names[i].sin_port));
                if (item == NULL || PyList_Append(out, item) < 0) {
                    Py_XDECREF(item);
                    Py_DECREF(out);
                    return NULL;
                }
                Py_DECREF(item);
                off += n;
            } while (off < len);
        }
        break; /* recvmmsg took what was there (an error after the first is left for later) */
    }
    return out;
}

/* send_many(sock, [(data, (host, port)), ...]) -> [(index, errno)] of the datagrams that
 * failed; the others were sent, in order */
static PyObject *send_many(PyObject *self, PyObject *args)
{
    PyObject *sockobj, *items;
    if (!PyArg_ParseTuple(args, "OO", &sockobj, &items))
        return NULL;
    int fd = PyObject_AsFileDescriptor(sockobj);
    if (fd < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(items, "send_many needs a sequence of (data, addr)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *failed = PyList_New(0);
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_in names[MAX_BATCH];
    Py_buffer bufs[MAX_BATCH];
    Py_ssize_t base = 0;
    while (failed != NULL && base < n) {
        int k = (int)(n - base < MAX_BATCH ? n - base : MAX_BATCH), got = 0;
        for (; got < k; got++) {
            PyObject *it = PySequence_Fast_GET_ITEM(seq, base + got), *data, *addr;
            if (!PyArg_ParseTuple(it, "OO", &data, &addr) ||
                addr_from_tuple(addr, &names[got]) < 0 ||
                PyObject_GetBuffer(data, &bufs[got], PyBUF_SIMPLE) < 0)
                break;
            memset(&msgs[got], 0, sizeof(msgs[got]));
            iov[got].iov_base = bufs[got].buf;
            iov[got].iov_len = (size_t)bufs[got].len;
            msgs[got].msg_hdr.msg_iov = &iov[got];
            msgs[got].msg_hdr.msg_iovlen = 1;
            msgs[got].msg_hdr.msg_name = &names[got];
            msgs[got].msg_hdr.msg_namelen = sizeof(names[got]);
        }
        int done = 0;
        while (got == k && done < k) {
            int r = sendmmsg(fd, msgs + done, (unsigned int)(k - done), MSG_DONTWAIT);
            if (r > 0) {
                done += r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            /* the datagram at `done` failed: note it and go on with the next, as a loop of
             * sendto calls that counts drops would */
            PyObject *f = Py_BuildValue("(ni)", base + done, r < 0 ? errno : EIO);
            if (f == NULL || PyList_Append(failed, f) < 0)
                Py_CLEAR(failed);
            Py_XDECREF(f);
            if (failed == NULL)
                break;
            done++;
        }
        for (int i = 0; i < got; i++)
            PyBuffer_Release(&bufs[i]);
        if (got < k)
            Py_CLEAR(failed); /* a bad item: the error is set */
        base += k;
    }
    Py_DECREF(seq);
    return failed;
}

/* record_offsets(buf, off, safe, max_records, max_record, big_endian) -> (offsets, off, full):
 * the fast part of a classic-pcap record walk (capture/pcapio.py mapped_batches). From `off`,
 * while off < safe and fewer than max_records are taken: read the record's captured length
 * (bytes 8..11 of its header), stop before one over max_record, else note off and step over
 * the record. `offsets` is the native-endian int64 array of the record offsets as bytes;
 * `full` says max_records were taken. The caller picks `safe` so that no record from there
 * can run past the buffer; reads past the buffer end stop the walk all the same. */
static PyObject *record_offsets(PyObject *self, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, safe, max_records;
    unsigned long long max_record;
    int big;
    if (!PyArg_ParseTuple(args, "y*nnnKp", &b, &off, &safe, &max_records, &max_record, &big))
        return NULL;
    if (safe > b.len - 12)
        safe = b.len - 12;
    Py_ssize_t cap = max_records;
    if (off < safe && (safe - off) / 16 + 1 < cap)
        cap = (safe - off) / 16 + 1;
    if (cap < 0)
        cap = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(out);
    const unsigned char *p = b.buf;
    Py_ssize_t k = 0;
    while (k < cap && off >= 0 && off < safe) {
        const unsigned char *h = p + off + 8;
        uint32_t incl = big ? ((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                               (uint32_t)h[2] << 8 | h[3])
                            : ((uint32_t)h[3] << 24 | (uint32_t)h[2] << 16 |
                               (uint32_t)h[1] << 8 | h[0]);
        if (incl > max_record)
            break;
        int64_t o = off;
        memcpy(dst + k * sizeof(int64_t), &o, sizeof o);
        k++;
        off += 16 + (Py_ssize_t)incl;
    }
    PyBuffer_Release(&b);
    int full = k == max_records;
    if (_PyBytes_Resize(&out, k * (Py_ssize_t)sizeof(int64_t)) < 0)
        return NULL;
    return Py_BuildValue("(Nni)", out, off, full);
}

static PyMethodDef methods[] = {
    {"ones_sum", ones_sum, METH_O, "int.from_bytes(data, 'big') % 0xFFFF"},
    {"checksum", (PyCFunction)(void (*)(void))checksum, METH_FASTCALL,
     "TCP checksum of segment for IPv4 addresses src_ip, dst_ip (pseudo-header protocol 6)"},
    {"recv_many", recv_many, METH_VARARGS,
     "recv_many(sock, limit) -> [(data, src_ip, src_port)] without blocking (recvmmsg)"},
    {"send_many", send_many, METH_VARARGS,
     "send_many(sock, [(data, (host, port))]) -> [(index, errno)] of failures (sendmmsg)"},
    {"record_offsets", record_offsets, METH_VARARGS,
     "record_offsets(buf, off, safe, max_records, max_record, big_endian) -> (offsets, off, full)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "Compiled twins of trickles_kit's hot helpers.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
