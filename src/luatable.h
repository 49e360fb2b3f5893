/*
** luatable.h: the array part of a Lua 5.4 table, read and written in place.
**
** Lua's C API moves one value per call, through a stack slot, with an
** index check: 15-30 ns a value, about what Lua takes to build the value
** in the first place.  A codec that goes through the API for every
** element of an array costs more than building the array.  So the codec
** reads the array part of the tables it encodes, and writes numbers and
** booleans into the array part of the tables it decodes, in place: values
** that are not collectable, so that no write needs a GC barrier.  All
** other values still go through the API.
**
** The layout below mirrors Lua 5.4's Table and TValue (lobject.h, the
** same from 5.4.0 to 5.4.7).  The codec checks it once per process
** against what the API says of a probe table (codec.c: intable_check),
** and uses the API alone if anything differs, if the environment has
** ISOLATE_API_ONLY set, or if the build defines ISOLATE_NO_INTERNALS.
*/
#ifndef luatable_h
#define luatable_h

#include <limits.h>

#include "lua.h"

#if LUA_VERSION_NUM == 504 && !defined(ISOLATE_NO_INTERNALS)
#define LUATABLE_INPLACE	1
#else
#define LUATABLE_INPLACE	0
#endif

typedef struct LTValue {
  union {
    void *gc;
    void *p;
    lua_CFunction f;
    lua_Integer i;
    lua_Number n;
  } value_;
  unsigned char tt_;
} LTValue;

typedef struct LTable {
  void *next;			/* CommonHeader */
  unsigned char tt, marked;
  unsigned char flags;		/* LT_NOTREALASIZE: 'alimit' is a hint */
  unsigned char lsizenode;
  unsigned int alimit;
  LTValue *array;
  void *node, *lastfree, *metatable, *gclist;
} LTable;

/* type tags (lobject.h: makevariant) */
#define LT_TABLE	0x05	/* a Table's own header tag */
#define LT_NIL		0x00
#define LT_FALSE	0x01
#define LT_TRUE		0x11
#define LT_INT		0x03
#define LT_FLOAT	0x13
#define LT_EMPTY	0x10	/* an array slot that was never set */
#define lt_isnil(v)	(((v)->tt_ & 0x0f) == 0)	/* nil, empty or absent */
/* a number or a boolean: a value that no GC barrier concerns */
#define lt_isscalar(v)	((v)->tt_ == LT_INT || (v)->tt_ == LT_FLOAT || \
			 (v)->tt_ == LT_TRUE || (v)->tt_ == LT_FALSE)

#define LT_NOTREALASIZE	0x80

/* the size of the array part (ltable.c: luaH_realasize) */
static inline unsigned int lt_asize (const LTable *t) {
  unsigned int size = t->alimit;
  if (!(t->flags & LT_NOTREALASIZE) || (size & (size - 1)) == 0) return size;
  size |= size >> 1;
  size |= size >> 2;
  size |= size >> 4;
  size |= size >> 8;
  size |= size >> 16;
#if UINT_MAX > 0xffffffffu
  size |= size >> 32;
#endif
  return size + 1;
}

#endif
