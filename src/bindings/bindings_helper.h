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
#include <linux/swap.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/vmstat.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_config.h>
#include <uapi/linux/virtio_ids.h>
#include <uapi/linux/virtio_ring.h>

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

/* alloc_pages_bulk() is a macro; the flags are balloon_page_alloc()'s. */
static inline unsigned long rust_vb_balloon_pages_bulk(unsigned long nr,
						       struct page **array)
{
	gfp_t gfp = __GFP_NOMEMALLOC | __GFP_NORETRY | __GFP_NOWARN |
		    (IS_ENABLED(CONFIG_BALLOON_MIGRATION) ? GFP_HIGHUSER_MOVABLE :
							    GFP_HIGHUSER);

	return alloc_pages_bulk(gfp, nr, array);
}

/* Constant expressions. */
const gfp_t RUST_CONST_HELPER_VB_GFP_HINT = __GFP_NORETRY | __GFP_NOWARN |
					   __GFP_NOMEMALLOC;
const unsigned int RUST_CONST_HELPER_VB_MAX_PAGE_ORDER = MAX_PAGE_ORDER;
const unsigned int RUST_CONST_HELPER_VB_PAGE_POISON = PAGE_POISON;
