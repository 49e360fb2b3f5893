/*
** buffer.h: a chunked byte buffer that no lua_State owns.
**
** An encoder appends to it on one thread; its ownership then passes, with
** the Job that holds it, to another thread, which reads it and frees it.
** Chunks never move once written, so a reservation can be patched later,
** and growing never copies what is already there.  Every reservation is
** contiguous: a reader that asks for the same sizes in the same order
** never sees an item cut in two.
*/
#ifndef buffer_h
#define buffer_h

#include <stddef.h>

typedef struct Chunk {
  struct Chunk *next;
  size_t size;			/* bytes allocated in data */
  size_t used;			/* bytes written */
  unsigned char data[];
} Chunk;

/*
** A message may borrow: hold the address of a long string instead of its
** bytes (codec_encodeborrowing), or an object whose constructor runs on
** the other side (its __isolate results may point into it).  What it
** borrows must then stay alive until the message has been decoded;
** 'owner', when set, is the lua_State that holds it, which whoever frees
** the buffer must close (or hand to a thread that closes it): buffer_free
** does not.
*/
typedef struct Buffer {
  Chunk *head, *tail;
  size_t total;			/* bytes written in all chunks */
  size_t borrowed;		/* bytes of strings borrowed, plus one an object */
  void *owner;			/* the lua_State whose strings it borrows, or NULL */
} Buffer;

#define BUFFER_INIT	{NULL, NULL, 0, 0, NULL}

unsigned char *buffer_grow (Buffer *b, size_t n);
void buffer_free (Buffer *b);
/*
** Map in the pages of a fresh block of 'size' bytes that is about to be
** written whole, in one call where the system has one (Linux 5.14's
** MADV_POPULATE_WRITE), not a page fault per page (ISOLATE_PREFAULT).
*/
void buffer_mapin (void *block, size_t size);

/* append the chunks of 'src' to 'dst' (no copy), with what 'src'
   borrows (then 'dst' must have no owner); 'src' is left empty */
void buffer_append (Buffer *dst, Buffer *src);

/* append a copy of the bytes of 'src' to 'dst'; 0 when memory runs out */
int buffer_copy (Buffer *dst, const Buffer *src);
/* move the contents of 'src' to 'dst' (freeing what 'dst' held); 'src' is left empty */
void buffer_move (Buffer *dst, Buffer *src);

/* 'n' contiguous bytes at the end of 'b', or NULL when memory runs out */
static inline unsigned char *buffer_reserve (Buffer *b, size_t n) {
  Chunk *c = b->tail;
  if (c != NULL && c->size - c->used >= n) {
    unsigned char *p = c->data + c->used;
    c->used += n;
    b->total += n;
    return p;
  }
  return buffer_grow(b, n);
}

/* give back the last 'n' bytes of the last reservation, unwritten */
static inline void buffer_unreserve (Buffer *b, size_t n) {
  b->tail->used -= n;
  b->total -= n;
}


/* A cursor over a buffer's chunks, or over one flat block of bytes. */
typedef struct Reader {
  const Chunk *next;		/* chunk after the current one */
  const unsigned char *p, *end;	/* unread part of the current block */
  size_t left;			/* bytes unread in all */
  size_t pos;			/* bytes read so far (for error messages) */
} Reader;

void reader_init (Reader *r, const Buffer *b);
void reader_initflat (Reader *r, const void *p, size_t n);
const unsigned char *reader_next (Reader *r, size_t n);

/* skip 'n' bytes that start an item; 0 if the input ends first */
int reader_skip (Reader *r, size_t n);

/* 'n' contiguous bytes, or NULL when the input ends or cuts an item */
static inline const unsigned char *reader_take (Reader *r, size_t n) {
  if ((size_t)(r->end - r->p) >= n) {
    const unsigned char *p = r->p;
    r->p += n;
    r->left -= n;
    r->pos += n;
    return p;
  }
  return reader_next(r, n);
}


/*
** A Buffer owned by a full userdata (metatable "isolate.Buffer", whose
** __gc frees it), pushed on the stack: memory that a Lua error cannot
** leak, and that nothing frees while the userdata is reachable.
*/
struct lua_State;
Buffer *buffer_push (struct lua_State *L);
/* the same, of a type of its own: a Buffer that only its maker reads */
Buffer *buffer_pushas (struct lua_State *L, const char *tname);

#endif
