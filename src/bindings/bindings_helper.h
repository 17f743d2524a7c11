/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C declarations the module needs beyond the kernel's own `kernel::bindings`.
 *
 * bindgen reads this header at build time (see Kbuild) with the kernel's own
 * clang flags. Static inline functions are reached through the C wrappers
 * bindgen's --wrap-static-fns generates; function-like macros and constant
 * expressions, which bindgen cannot bind, get a one-line static inline or a
 * RUST_CONST_HELPER_ constant below, the same trick rust/bindings uses.
 */

#include <linux/balloon.h>
#include <linux/mm.h>
#include <linux/oom.h>
#include <linux/page_reporting.h>
#include <linux/pm_wakeup.h>
#include <linux/poison.h>
#include <linux/scatterlist.h>
#include <linux/shrinker.h>
#include <linux/spinlock.h>
#include <linux/srcu.h>
#include <linux/swap.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/vmstat.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_config.h>
#include <uapi/linux/virtio_ids.h>
#include <uapi/linux/virtio_ring.h>
#include <xen/xen.h>

/* Function-like macros. */
static inline unsigned long rust_vb_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

static inline struct list_head *rust_vb_page_lru(struct page *page)
{
	return &page->lru;
}

static inline struct page *rust_vb_lru_page(struct list_head *lru)
{
	return list_entry(lru, struct page, lru);
}

static inline void *rust_vb_page_address(struct page *page)
{
	return page_address(page);
}

/* get_nr_swap_pages() is a macro without CONFIG_SWAP. */
static inline long rust_vb_nr_swap_pages(void)
{
	return get_nr_swap_pages();
}

/*
 * alloc_pages_bulk_node() is a macro; the flags are balloon_page_alloc()'s.
 * NUMA_NO_NODE prefers the local node (numa_mem_id()).
 */
static inline unsigned long rust_vb_balloon_pages_bulk(int nid, unsigned long nr,
						       struct page **array)
{
	gfp_t gfp = __GFP_NOMEMALLOC | __GFP_NORETRY | __GFP_NOWARN |
		    (IS_ENABLED(CONFIG_BALLOON_MIGRATION) ? GFP_HIGHUSER_MOVABLE :
							    GFP_HIGHUSER);

	return alloc_pages_bulk_node(gfp, nid == NUMA_NO_NODE ? numa_mem_id() : nid,
				     nr, array);
}

/*
 * Whether a zone of node nid that gfp may use keeps its low watermark
 * (and the lowmem reserve that protects it from gfp's zones) after giving
 * a block of 2^order pages: the page allocator's fast-path test, roughly.
 * Without it, a block allocation that may not reclaim still takes memory
 * down to the min watermark (its slow path tries once there) without
 * waking kswapd, leaving the guest's own allocations to reclaim directly.
 */
static inline bool rust_vb_zone_above_low(struct zone *zone, long taken, int highest)
{
	return (long)zone_page_state(zone, NR_FREE_PAGES) - taken >=
	       (long)low_wmark_pages(zone) + zone->lowmem_reserve[highest];
}

static inline bool rust_vb_block_above_low(int nid, unsigned int order, gfp_t gfp)
{
	pg_data_t *pgdat = NODE_DATA(nid);
	int highest = gfp_zone(gfp);
	int z;

	for (z = highest; z >= 0; z--) {
		struct zone *zone = &pgdat->node_zones[z];

		if (populated_zone(zone) && rust_vb_zone_above_low(zone, 1L << order, highest))
			return true;
	}
	return false;
}

/*
 * alloc_pages_node() is a macro. A whole block of 2^order pages on node nid
 * only, with balloon_page_alloc()'s zones and mobility (ZONE_MOVABLE
 * first: GFP_HIGHUSER_MOVABLE keeps __GFP_HIGHMEM, which with
 * __GFP_MOVABLE selects it), and only if free memory has one at hand above
 * the low watermark: no reclaim, no compaction, no kswapd wakeup, no
 * memory the guest's own allocations would have to reclaim for (a block
 * not at hand is not worth any work: the caller falls back to single
 * pages). Not compound: split_page() takes it apart.
 */
static inline struct page *rust_vb_balloon_block_alloc(int nid, unsigned int order)
{
	gfp_t gfp = IS_ENABLED(CONFIG_BALLOON_MIGRATION) ? GFP_HIGHUSER_MOVABLE : GFP_HIGHUSER;

	gfp &= ~__GFP_RECLAIM;
	gfp |= __GFP_THISNODE | __GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC;
	struct page *page;

	if (!rust_vb_block_above_low(nid, order, gfp))
		return NULL;
	page = alloc_pages_node(nid, gfp, order);
	/*
	 * The allocation may have come from another zone than the one found
	 * above low, at the min watermark: the zone it came from must still
	 * be above low, else the block goes back.
	 */
	if (page && !rust_vb_zone_above_low(page_zone(page), 0, gfp_zone(gfp))) {
		__free_pages(page, order);
		return NULL;
	}
	return page;
}

static inline int rust_vb_numa_mem_id(void)
{
	return numa_mem_id();
}

/* Node mask macros: the first node with memory (nid < 0), else the next. */
static inline int rust_vb_next_memory_node(int nid)
{
	return nid < 0 ? first_memory_node : next_memory_node(nid);
}

/*
 * For src/compat.rs on kernels whose Rust API lacks SpinLockIrq and Srcu
 * (7.2): macros around spin locks and SRCU.
 */
static inline unsigned long rust_vb_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

static inline void rust_vb_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

static inline int rust_vb_spin_trylock_irqsave(spinlock_t *lock, unsigned long *flags)
{
	return spin_trylock_irqsave(lock, *flags);
}

static inline int rust_vb_init_srcu_struct(struct srcu_struct *ssp, const char *name,
					   struct lock_class_key *key)
{
#ifdef CONFIG_DEBUG_LOCK_ALLOC
	return __init_srcu_struct(ssp, name, key);
#else
	return init_srcu_struct(ssp);
#endif
}

/* For the KUnit ring fixture (src/virtio/virtqueue/kunit.rs): a macro. */
static inline bool rust_vb_xen_domain(void)
{
	return xen_domain();
}

/* For the test device (qemu-test/fake-device): macros. */
static inline void *rust_vb_phys_to_virt(phys_addr_t addr)
{
	return phys_to_virt(addr);
}

static inline unsigned long rust_vb_local_irq_save(void)
{
	unsigned long flags;

	local_irq_save(flags);
	return flags;
}

static inline void rust_vb_local_irq_restore(unsigned long flags)
{
	local_irq_restore(flags);
}

/* Constant expressions. */
/* Free memory only: no reclaim, retry, warning or reserves. */
const gfp_t RUST_CONST_HELPER_VB_GFP_FREE_BLOCK = __GFP_NORETRY | __GFP_NOWARN |
						 __GFP_NOMEMALLOC;
const unsigned int RUST_CONST_HELPER_VB_MAX_PAGE_ORDER = MAX_PAGE_ORDER;
const int RUST_CONST_HELPER_VB_MAX_NUMNODES = MAX_NUMNODES;
const int RUST_CONST_HELPER_VB_NUMA_NO_NODE = NUMA_NO_NODE;
const unsigned int RUST_CONST_HELPER_VB_PAGE_POISON = PAGE_POISON;
