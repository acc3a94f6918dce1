/*
 * guest_shm.h: the vdev-shmem guest ABI for C guests of Tessera.
 *
 * The names follow the QNX Hypervisor's public <qvm/guest_shm.h>, so that a
 * C program written against that header compiles against this one and
 * runs unchanged; the contract itself is shared/design/vdev-shmem-abi.md
 * in the Tessera tree (and docs/guest-interface.md, "Shared memory").
 * Written for Tessera; not a copy of the QNX file.
 *
 * A factory page (one per device instance, at the address the device tree's
 * `qvm,guest_shm` node gives) creates and finds regions; each connection
 * to a region has a control page, followed by the region's data pages.
 * Map both kinds of page as device memory (or as cacheable memory: the
 * hypervisor decodes the plain loads and stores a compiler emits there,
 * and refuses exclusives, atomics and SIMD accesses with an external
 * abort).
 */
#ifndef TESSERA_GUEST_SHM_H
#define TESSERA_GUEST_SHM_H

#ifdef __KERNEL__
#include <linux/types.h> /* the kernel's uint32_t and uint64_t */
#else
#include <stdint.h>
#endif

/* The factory's `status` after a request. */
enum guest_shm_status {
	GSS_OK = 0,              /* the request succeeded */
	GSS_UNKNOWN_FAILURE = 1, /* a failure none of the others names */
	GSS_NOMEM = 2,           /* no memory, over the limit, or the window is full */
	GSS_CLIENT_MAX = 3,      /* the region has GUEST_SHM_MAX_CLIENTS connections */
	GSS_ILLEGAL_NAME = 4,    /* empty, unterminated, or a byte outside 0x21..0x7e */
	GSS_NO_PERMISSION = 5,   /* this VM's allow/deny rules refuse the name */
	GSS_DOES_NOT_EXIST = 6,  /* a find (or a create of 0 pages) of a missing region */
};

/* Connections one region may have; a connection's index is below it. */
#define GUEST_SHM_MAX_CLIENTS 16

/* Bytes of the factory's name field: up to 31 name bytes, then NUL. */
#define GUEST_SHM_MAX_NAME 32

/* What the factory's `signature` reads: the bytes "QVMG2GSM". */
#define GUEST_SHM_SIGNATURE 0x4d534732474d5651ULL

/* Its two 32-bit halves, for code that reads the field in two loads. */
#define GUEST_SHM_SIGNATURE_L 0x474d5651U
#define GUEST_SHM_SIGNATURE_H 0x4d534732U

/* The size of the factory page, a control page and a data page. */
#define GUEST_SHM_PAGE_SIZE 0x1000U

/* A `notify` value that signals every attached peer but the writer. */
#define GUEST_SHM_NOTIFY_ALL_BUT_ME 0xffffffffU

/*
 * The factory page, little-endian. A request is the write of `size`
 * (create-or-attach with that many 4 KiB pages) or of `find` (attach only
 * if the region exists); it uses `name` as it stands at that moment, so
 * write the name first. Then `status` says how it went and, on success,
 * `shmem` is the connection's control page and `size` the region's size in
 * pages (the creator's choice when the region existed).
 */
struct guest_shm_factory {
	uint64_t signature;             /* 0x00 RO: GUEST_SHM_SIGNATURE */
	uint64_t shmem;                 /* 0x08 RO: control page of the last success */
	uint32_t vector;                /* 0x10 RO: the INTID raised for connections */
	uint32_t status;                /* 0x14 RO: enum guest_shm_status */
	uint32_t size;                  /* 0x18 RW: write = create-or-attach, read = pages */
	char name[GUEST_SHM_MAX_NAME];  /* 0x1C RW: the region's name, NUL-terminated */
	uint32_t find;                  /* 0x3C WO: write = attach only if it exists */
};

/*
 * A connection's control page, at `shmem`; the region's data pages follow
 * it at `shmem + GUEST_SHM_PAGE_SIZE`.
 */
struct guest_shm_control {
	uint32_t status; /* 0x0 RO: bits 0..15 who notified since the last read
	                  *  (the read clears them and lowers the vector),
	                  *  bits 16..31 who is attached now, self included */
	uint32_t idx;    /* 0x4 RO: this connection's index */
	uint32_t notify; /* 0x8 RW: write a mask of indices to signal, or
	                  *  GUEST_SHM_NOTIFY_ALL_BUT_ME; read (a Tessera
	                  *  extension): whom the last notify reached */
	uint32_t detach; /* 0xC WO: write anything to detach */
};

/* The layouts above are the ABI; a compiler that pads them is refused. */
#if !defined(__KERNEL__) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stddef.h>
_Static_assert(offsetof(struct guest_shm_factory, shmem) == 0x08, "guest_shm_factory.shmem");
_Static_assert(offsetof(struct guest_shm_factory, vector) == 0x10, "guest_shm_factory.vector");
_Static_assert(offsetof(struct guest_shm_factory, status) == 0x14, "guest_shm_factory.status");
_Static_assert(offsetof(struct guest_shm_factory, size) == 0x18, "guest_shm_factory.size");
_Static_assert(offsetof(struct guest_shm_factory, name) == 0x1C, "guest_shm_factory.name");
_Static_assert(offsetof(struct guest_shm_factory, find) == 0x3C, "guest_shm_factory.find");
_Static_assert(sizeof(struct guest_shm_factory) == 0x40, "guest_shm_factory size");
_Static_assert(offsetof(struct guest_shm_control, idx) == 0x4, "guest_shm_control.idx");
_Static_assert(offsetof(struct guest_shm_control, notify) == 0x8, "guest_shm_control.notify");
_Static_assert(offsetof(struct guest_shm_control, detach) == 0xC, "guest_shm_control.detach");
_Static_assert(sizeof(struct guest_shm_control) == 0x10, "guest_shm_control size");
#endif

/*
 * Create-or-attach with `size` pages: the region's name must already be in
 * factory->name. The compiler barriers keep the request after the name
 * stores and before the reads of the result.
 */
static inline void
guest_shm_create(volatile struct guest_shm_factory *const factory, unsigned const size)
{
	__asm__ __volatile__("" ::: "memory");
	factory->size = size;
	__asm__ __volatile__("" ::: "memory");
}

/* Attach to the region named in factory->name only if it exists. */
static inline void
guest_shm_find(volatile struct guest_shm_factory *const factory, unsigned const value)
{
	__asm__ __volatile__("" ::: "memory");
	factory->find = value;
	__asm__ __volatile__("" ::: "memory");
}

/*
 * Signal the connections in `mask` (a Tessera addition). On aarch64 a
 * `dsb ish` first completes the data stores, so the peers see them before
 * they see the signal; the hypervisor orders its side too.
 */
static inline void
guest_shm_notify(volatile struct guest_shm_control *const control, uint32_t const mask)
{
#if defined(__aarch64__)
	__asm__ __volatile__("dsb ish" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
	control->notify = mask;
}

/*
 * Read (and clear) the status (a Tessera addition). On aarch64 a `dmb ish`
 * after the load keeps later data loads from being satisfied before it.
 */
static inline uint32_t
guest_shm_status(volatile struct guest_shm_control *const control)
{
	uint32_t const status = control->status;
#if defined(__aarch64__)
	__asm__ __volatile__("dmb ish" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
	return status;
}

#endif /* TESSERA_GUEST_SHM_H */
