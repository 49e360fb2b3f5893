/*
** buffer.c: the chunked transfer buffer (see buffer.h).
*/
#define _DEFAULT_SOURCE		/* madvise */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "buffer.h"


/*
** Slow path of buffer_reserve: start a new chunk.  Chunks double from
** ISOLATE_CHUNK_MIN up to ISOLATE_CHUNK_MAX, so a result of n bytes takes
** O(log n) mallocs and no copies; a reservation larger than that gets a
** chunk of its own size (a long string is then one block, read in place).
*/
unsigned char *buffer_grow (Buffer *b, size_t n) {
  size_t size = (b->tail == NULL) ? ISOLATE_CHUNK_MIN : b->tail->size * 2;
  Chunk *c;
  if (size > ISOLATE_CHUNK_MAX) size = ISOLATE_CHUNK_MAX;
  if (size < n) size = n;
  c = (Chunk *)malloc(sizeof(Chunk) + size);
  if (c == NULL) return NULL;
  c->next = NULL;
  c->size = size;
  c->used = n;
  if (b->tail == NULL) b->head = c;
  else b->tail->next = c;
  b->tail = c;
  b->total += n;
  return c->data;
}


void buffer_free (Buffer *b) {
  Chunk *c = b->head;
  while (c != NULL) {
    Chunk *next = c->next;
    free(c);
    c = next;
  }
  b->head = b->tail = NULL;
  b->total = b->borrowed = 0;
  b->owner = NULL;
}


void buffer_mapin (void *block, size_t size) {
#if defined(MADV_POPULATE_WRITE)
  long pagesize = sysconf(_SC_PAGESIZE);
  uintptr_t first, end;
  if (pagesize <= 0) return;
  first = ((uintptr_t)block + pagesize - 1) & ~(uintptr_t)(pagesize - 1);
  end = ((uintptr_t)block + size) & ~(uintptr_t)(pagesize - 1);
  if (end > first)		/* an older kernel says EINVAL: so be it */
    (void)madvise((void *)first, end - first, MADV_POPULATE_WRITE);
#else
  (void)block; (void)size;
#endif
}


void buffer_append (Buffer *dst, Buffer *src) {
  if (src->head == NULL) {
    if (src->owner != NULL) dst->owner = src->owner;
    src->owner = NULL;
    return;
  }
  if (dst->tail == NULL) dst->head = src->head;
  else dst->tail->next = src->head;
  dst->tail = src->tail;
  dst->total += src->total;
  dst->borrowed += src->borrowed;
  if (src->owner != NULL) dst->owner = src->owner;
  src->head = src->tail = NULL;
  src->total = src->borrowed = 0;
  src->owner = NULL;
}


void buffer_move (Buffer *dst, Buffer *src) {
  if (dst == src) return;
  buffer_free(dst);
  buffer_append(dst, src);
}


int buffer_copy (Buffer *dst, const Buffer *src) {
  const Chunk *c;
  for (c = src->head; c != NULL; c = c->next) {
    unsigned char *p = buffer_reserve(dst, c->used);
    if (p == NULL) return 0;
    memcpy(p, c->data, c->used);
  }
  return 1;
}


static int buffer_gc (lua_State *L) {	/* upvalue: the type's name */
  buffer_free((Buffer *)luaL_checkudata(L, 1, lua_tostring(L, lua_upvalueindex(1))));
  return 0;
}

Buffer *buffer_push (lua_State *L) {
  return buffer_pushas(L, "isolate.Buffer");
}

Buffer *buffer_pushas (lua_State *L, const char *tname) {
  Buffer *b = (Buffer *)lua_newuserdatauv(L, sizeof(Buffer), 0);
  memset(b, 0, sizeof(Buffer));
  if (luaL_newmetatable(L, tname)) {
    lua_pushstring(L, tname);
    lua_pushcclosure(L, buffer_gc, 1);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);	/* getmetatable(buffer) is false: no __gc by hand */
    lua_setfield(L, -2, "__metatable");
  }
  lua_setmetatable(L, -2);
  return b;
}


void reader_init (Reader *r, const Buffer *b) {
  r->next = (b->head != NULL) ? b->head->next : NULL;
  r->p = (b->head != NULL) ? b->head->data : NULL;
  r->end = (b->head != NULL) ? b->head->data + b->head->used : NULL;
  r->left = b->total;
  r->pos = 0;
}


void reader_initflat (Reader *r, const void *p, size_t n) {
  r->next = NULL;
  r->p = (const unsigned char *)p;
  r->end = r->p + n;
  r->left = n;
  r->pos = 0;
}


/*
** Slow path of reader_take: the current block is used up, so the item
** starts at the next non-empty chunk.  A block with some bytes left but
** fewer than 'n' means the item was cut: malformed input.
*/
const unsigned char *reader_next (Reader *r, size_t n) {
  if (r->p != r->end) return NULL;
  while (r->next != NULL && r->next->used == 0)
    r->next = r->next->next;
  if (r->next == NULL || r->next->used < n) return NULL;
  r->p = r->next->data;
  r->end = r->p + r->next->used;
  r->next = r->next->next;
  return reader_take(r, n);
}


int reader_skip (Reader *r, size_t n) {
  if (n > r->left) return 0;
  while (n > 0) {
    size_t here = (size_t)(r->end - r->p);
    if (here == 0) {
      while (r->next != NULL && r->next->used == 0)
        r->next = r->next->next;
      if (r->next == NULL) return 0;
      r->p = r->next->data;
      r->end = r->p + r->next->used;
      r->next = r->next->next;
      continue;
    }
    if (here > n) here = n;
    r->p += here;
    r->left -= here;
    r->pos += here;
    n -= here;
  }
  return 1;
}
