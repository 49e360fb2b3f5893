/*
** codec.c: encode Lua values into a Buffer, decode them into a state.
**
** A message is a magic "\x1bISO", a version byte, a varint count of
** values, the 8-byte offset (from the message's start) of its names
** section or 0, the values, then the names section: the modules that the
** values name, each once (a varint count, then strings).
**
** One tag byte per value, with small integers and short strings inline in
** the tag.  A table is its array part (1..#t) then its other pairs, then
** its metatable; a function is its bytecode (with debug information, so
** remote tracebacks have lines), then its upvalues.  Tables and functions
** get ids in the order they are first met, on both sides, so a second
** reference is a T_REF and cycles close.  Upvalues shared by two closures
** are a T_UPREF to the first closure that holds them, joined on decoding.
** A value that travels by name (names.h) is a T_MODULE or T_FIELD that
** points into the names section.
**
** The encoder runs in the sending state and raises a Lua error, naming the
** path to the value, for what cannot travel; the buffer it was writing
** belongs to its caller, who frees it.
**
** The decoder trusts nothing.  Every tag, length, id and count is checked;
** every table and function counts toward the depth limit; and every count
** of elements is a promise of at least one byte each, drawn from one
** budget for the whole input: a count can never promise more elements than
** the bytes left after all the promises that enclose it, so what a message
** makes its decoder allocate is bounded by a small constant times its size.
** Bytecode can crash a VM, and modules, C functions, the globals table and
** light userdata reach live objects: all are refused unless the input is
** trusted (CODEC_TRUSTED).  The names a message needs are resolved (with
** require, for trusted input) before any of its values is read, so no
** user code runs while values are decoded, except finalizers.
*/
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "codec.h"
#include "luatable.h"
#include "names.h"
#include "state.h"


enum Tag {
  T_NIL, T_FALSE, T_TRUE,
  T_INT8, T_INT16, T_INT32, T_INT64,	/* little-endian, two's complement */
  T_FLOAT,		/* 8 bytes: IEEE-754 bits, little-endian */
  T_STRING,		/* varint length, bytes */
  T_TABLE,		/* u32 narr, u32 nhash, narr values, nhash pairs */
  T_TABLEMT,		/* the same, then the metatable */
  T_REF,		/* varint id of a table or function met before */
  T_FUNCTION,		/* varint size, bytecode, varint nups, upvalues */
  T_UPREF,		/* as an upvalue only: varint function id, varint n */
  T_GLOBALS,		/* the destination's globals table */
  T_MODULE,		/* varint i: the module of name i */
  T_FIELD,		/* varint i, varint length, bytes: module i's field */
  T_LIGHTUD,		/* 8 bytes: the pointer */
  T_OBJECT,		/* varint n, then n values: a constructor, its arguments */
  T_BORROWED,		/* varint length, 8 bytes: the address of the bytes */
  T_KEYREF,		/* as a table key only: varint id of a short key sent before */
  T_LENT,		/* u32 narr, u32 nhash, 8 bytes: the address of a table of this
			   process whose narr first slots are numbers or booleans to
			   copy, then nhash pairs */
  T_SHORTSTR = 0x20,	/* 0x20-0x3f: a string of (tag - 0x20) bytes */
  T_SMALLINT = 0x80	/* 0x80-0xff: the integer (tag - 0x80) */
};

#define SHORTSTR_MAX	31

static const unsigned char magic[5] = {0x1b, 'I', 'S', 'O', 3};

#define OFFSET_SIZE	8	/* bytes of the names section's offset */

#define STR(x)		#x
#define XSTR(x)		STR(x)
#define LEVELS		XSTR(ISOLATE_MAXDEPTH)


/*
** {======================================================
** Writing (plain C: no Lua state needed, 0 when memory runs out)
** =======================================================
*/

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LITTLE_ENDIAN_HOST	1	/* 'n' bytes of a value are its first n */
#else
#define LITTLE_ENDIAN_HOST	0
#endif

/* (inline: with a constant 'n', a single store on a little-endian host) */
static inline void put_le (unsigned char *p, uint64_t v, int n) {
  int i;
  if (LITTLE_ENDIAN_HOST) memcpy(p, &v, (size_t)n);
  else for (i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static int w_bytes (Buffer *b, const void *s, size_t n) {
  unsigned char *p = buffer_reserve(b, n);
  if (p == NULL) return 0;
  if (n > 0) memcpy(p, s, n);
  return 1;
}

/* an optional tag byte (tag < 0: none), then 'v' as an unsigned LEB128 */
static int w_tagvarint (Buffer *b, int tag, uint64_t v) {
  unsigned char *p = buffer_reserve(b, 11), *q = p;	/* (1 + 10 at most) */
  if (p == NULL) return 0;
  if (tag >= 0) *q++ = (unsigned char)tag;
  while (v >= 0x80) {
    *q++ = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  *q++ = (unsigned char)v;
  buffer_unreserve(b, (size_t)(p + 11 - q));
  return 1;
}

static int w_string (Buffer *b, const char *s, size_t len) {
  if (len <= SHORTSTR_MAX) {
    unsigned char *p = buffer_reserve(b, 1 + len);
    if (p == NULL) return 0;
    p[0] = (unsigned char)(T_SHORTSTR + len);
    memcpy(p + 1, s, len);
    return 1;
  }
  return w_tagvarint(b, T_STRING, len) && w_bytes(b, s, len);
}


int codec_putstring (Buffer *b, const char *s, size_t len) {
  return w_tagvarint(b, -1, len) && w_bytes(b, s, len);
}


int codec_putstrings (Buffer *b, const char *const *s, int n) {
  unsigned char *p;
  int i;
  if (!w_bytes(b, magic, sizeof(magic)) || !w_tagvarint(b, -1, (uint64_t)n) ||
      (p = buffer_reserve(b, OFFSET_SIZE)) == NULL)
    return 0;
  put_le(p, 0, OFFSET_SIZE);		/* no names */
  for (i = 0; i < n; i++) {
    static const unsigned char nil = T_NIL;
    if (!(s[i] == NULL ? w_bytes(b, &nil, 1) : w_string(b, s[i], strlen(s[i]))))
      return 0;
  }
  return 1;
}

/* }====================================================== */


/*
** {======================================================
** Array parts in place (luatable.h)
** =======================================================
*/

/*
** Whether this Lua lays tables out as luatable.h says: a table made and
** filled through the API must read the same in place, and a value
** written in place must read the same through the API.  The header is
** checked before the array pointer is followed.  Once per process (two
** threads that check at once find the same).
*/
static atomic_int intable_state;	/* 0: not checked; 1: usable; -1: not */

static int intable_probe (lua_State *L) {
  const LTable *t;
  LTValue *a;
  int ok;
  const char *off = getenv("ISOLATE_API_ONLY");
  if (!LUATABLE_INPLACE || (off != NULL && *off != '\0')) return 0;
  lua_createtable(L, 4, 0);
  lua_pushinteger(L, (lua_Integer)0x1234567890abcdefLL);
  lua_rawseti(L, -2, 1);
  lua_pushnumber(L, -2.5);
  lua_rawseti(L, -2, 2);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 3);
  t = (const LTable *)lua_topointer(L, -1);
  ok = t != NULL && t->tt == LT_TABLE && t->alimit == 4 &&
       !(t->flags & LT_NOTREALASIZE) && t->array != NULL && lt_asize(t) == 4;
  if (ok) {
    a = t->array;
    ok = a[0].tt_ == LT_INT && a[0].value_.i == (lua_Integer)0x1234567890abcdefLL &&
         a[1].tt_ == LT_FLOAT && a[1].value_.n == -2.5 &&
         a[2].tt_ == LT_TRUE && lt_isnil(&a[3]);
    if (ok) {
      a[3].value_.i = 42;
      a[3].tt_ = LT_INT;
      ok = lua_rawgeti(L, -1, 4) == LUA_TNUMBER && lua_isinteger(L, -1) &&
           lua_tointeger(L, -1) == 42 && lua_rawlen(L, -2) == 4;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return ok;
}

static int intable_usable (lua_State *L) {
  int state = atomic_load_explicit(&intable_state, memory_order_relaxed);
  if (state == 0) {
    state = intable_probe(L) ? 1 : -1;
    atomic_store_explicit(&intable_state, state, memory_order_relaxed);
  }
  return state > 0;
}


int codec_inplace (lua_State *L) {
  return intable_usable(L);
}

/* }====================================================== */


/*
** {======================================================
** Encoding
** =======================================================
*/

/* one step of the path to the value being encoded, for error messages */
typedef struct Step {
  enum { S_ARG, S_RESULT, S_VALUE, S_ITEM, S_ITEMRESULT, S_UPVALUE, S_FIELD, S_INDEX, S_KEYOF,
         S_KEY, S_METATABLE, S_OBJECT } kind;
  int idx;			/* stack index: S_UPVALUE's function, S_KEYOF's and
				   S_FIELD's key */
  lua_Integer n;		/* S_ARG, S_RESULT, S_VALUE, S_INDEX */
  const char *name;		/* S_UPVALUE: a string on the stack */
} Step;

/*
** The tables, functions and objects met so far, by address: an open
** addressing hash outside Lua's heap (seen_grow: made when first needed,
** doubled when half full).  Each one is also kept in a Lua array, id -> object, so that
** none can be collected while the encoder runs (finalizers and __isolate
** run Lua code) and another take its address.
*/
typedef struct SeenSlot {
  const void *p;
  lua_Integer id;
} SeenSlot;

typedef struct Seen {
  size_t mask, count;
  SeenSlot slot[1];
} Seen;

/*
** Short strings that were table keys, so that a key met again is sent as
** a T_KEYREF: records of the same kind repeat their keys, and a decoder
** that pushes one as it is spares hashing and interning it again.  Each
** short key written is numbered on both sides; the cache keeps the last
** one of each slot, with its bytes, so that a hit is always right.
*/
#define KEYCACHE	128

typedef struct KeySlot {
  const char *p;		/* the string when cached (a quick first test) */
  uint32_t id;
  unsigned char len;
  char bytes[SHORTSTR_MAX];
} KeySlot;

typedef struct Encoder {
  lua_State *L;
  Buffer *b;
  Role role;
  int globals;			/* stack index of the globals table */
  int seen;			/* stack index of the userdata that owns 'seenmem' (or nil) */
  int kept;			/* stack index: id -> table or function met */
  Buffer *seenmem;		/* the memory of the Seen hash (seen_grow) */
  Seen *seenp;
  int upvals;			/* upvalue id -> function id * 256 + (n - 1) */
  int used;			/* module name -> i, i -> name: the names section */
  lua_Integer nused;
  Names names;
  lua_Integer nextid;
  int nest;			/* tables and functions open */
  int depth;			/* steps in 'path' */
  lua_Integer *failed;		/* where to note the value that cannot go */
  size_t borrow;		/* strings this long or longer are borrowed (0: none) */
  int pins;			/* stack index: what the message borrows (made when needed) */
  lua_Integer npins;
  int pinnedat;			/* stack index of the userdata that owns 'pinned' */
  int first, value;		/* stack index of the first value, of the one being sent */
  Buffer *pinned;		/* the address of each pin, in order */
  int ran;			/* Lua code ran (an __isolate) */
  uint32_t nkeys;		/* short keys numbered */
  int inplace;			/* array parts are read in place (luatable.h) */
  int lend;			/* tables of numbers may be lent (T_LENT) */
  KeySlot keys[KEYCACHE];
  Step path[ISOLATE_MAXDEPTH + 2];	/* an argument, then a step a level */
} Encoder;


static void render_step (lua_State *L, const Step *s) {
  lua_Debug ar;
  switch (s->kind) {
    case S_ARG: lua_pushfstring(L, "argument #%I", (LUAI_UACINT)s->n); break;
    case S_RESULT: lua_pushfstring(L, "result #%I", (LUAI_UACINT)s->n); break;
    case S_VALUE: lua_pushfstring(L, "value #%I", (LUAI_UACINT)s->n); break;
    case S_ITEM: lua_pushfstring(L, "item #%I", (LUAI_UACINT)s->n); break;
    case S_ITEMRESULT: lua_pushfstring(L, "result of item #%I", (LUAI_UACINT)s->n); break;
    case S_UPVALUE:
      lua_pushvalue(L, s->idx);
      lua_getinfo(L, ">S", &ar);
      lua_pushfstring(L, "upvalue '%s' of function <%s:%d>", s->name,
                      ar.short_src, ar.linedefined);
      break;
    case S_FIELD: lua_pushfstring(L, "field '%s'", lua_tostring(L, s->idx)); break;
    case S_INDEX: lua_pushfstring(L, "[%I]", (LUAI_UACINT)s->n); break;
    case S_KEYOF:
      if (lua_type(L, s->idx) == LUA_TNUMBER || lua_type(L, s->idx) == LUA_TBOOLEAN)
        lua_pushfstring(L, "[%s]", luaL_tolstring(L, s->idx, NULL));
      else
        lua_pushfstring(L, "[%s key]", luaL_typename(L, s->idx));
      break;
    case S_KEY: lua_pushliteral(L, "key"); break;
    case S_METATABLE: lua_pushliteral(L, "metatable"); break;
    case S_OBJECT: lua_pushfstring(L, "__isolate result #%I", (LUAI_UACINT)s->n); break;
  }
}


/*
** Raise "isolate: <what> (<path>)".  For a call, the function itself is
** argument #1; what it captures reads better without that prefix:
** "upvalue 'f' of function <main.lua:12>".  A long path keeps its first
** and last steps, with " > ... > " between them.
*/
#define PATH_ENDS	4

static int fail (Encoder *e, const char *what) {
  lua_State *L = e->L;
  if (e->failed != NULL && e->depth > 0) *e->failed = e->path[0].n;
  int i = (e->role == ROLE_CALL && e->depth > 1 && e->path[0].n == 1);
  int n = 1;
  isolate_checkstack(L, 4 * PATH_ENDS + 16);
  lua_pushfstring(L, "isolate: %s", what);
  if (e->depth == 0) return lua_error(L);
  lua_pushliteral(L, " (");
  n++;
  for (; i < e->depth; i++) {
    int top;
    if (i == PATH_ENDS && e->depth > 2 * PATH_ENDS + 1) {
      lua_pushliteral(L, "... > ");
      n++;
      i = e->depth - PATH_ENDS;
    }
    top = lua_gettop(L);
    render_step(L, &e->path[i]);
    if (lua_gettop(L) > top + 1) {	/* keep only the rendered step */
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
    }
    if (i < e->depth - 1) {
      lua_pushliteral(L, " > ");
      n++;
    }
    n++;
  }
  lua_pushliteral(L, ")");
  lua_concat(L, n + 1);
  return lua_error(L);
}


/*
** Out of memory for the buffer: Lua's own memory error, so that it is
** reported as one.  (lua_error raises LUA_ERRMEM for the very string
** "not enough memory", which Lua keeps preallocated.)
*/
static int nomem (Encoder *e) {
  lua_pushliteral(e->L, "not enough memory");
  return lua_error(e->L);
}


static void step (Encoder *e, int kind, int idx, lua_Integer n,
                  const char *name) {
  Step *s = &e->path[e->depth++];
  s->kind = kind;
  s->idx = idx;
  s->n = n;
  s->name = name;
}

#define unstep(e)	((e)->depth--)


/* one more table or function open; a path step for each fits in 'path' */
static void enter (Encoder *e) {
  if (++e->nest > ISOLATE_MAXDEPTH)
    fail(e, "value nested too deeply (more than " LEVELS " levels)");
  isolate_checkstack(e->L, 8);
}

#define leave(e)	((e)->nest--)


static inline unsigned char *reserve (Encoder *e, size_t n) {
  unsigned char *p = buffer_reserve(e->b, n);
  if (p == NULL) nomem(e);
  return p;
}

#define put1(e,tag)	(*reserve(e, 1) = (unsigned char)(tag))

static void put_varint (Encoder *e, int tag, uint64_t v) {
  if (!w_tagvarint(e->b, tag, v)) nomem(e);
}

static void put_string (Encoder *e, const char *s, size_t len) {
  if (!w_string(e->b, s, len)) nomem(e);
}

static void put_raw (Encoder *e, const char *s, size_t len) {
  if (!codec_putstring(e->b, s, len)) nomem(e);
}


/* an integer at 'p', in 1 to 9 bytes: returns the byte after it */
static inline unsigned char *integer_to (unsigned char *p, lua_Integer v) {
  if (0 <= v && v < 0x80) {
    *p = (unsigned char)(T_SMALLINT + v);
    return p + 1;
  }
  if (v >= INT8_MIN && v <= INT8_MAX) {
    p[0] = T_INT8;
    p[1] = (unsigned char)v;
    return p + 2;
  }
  if (v >= INT16_MIN && v <= INT16_MAX) {
    p[0] = T_INT16;
    put_le(p + 1, (uint64_t)v, 2);
    return p + 3;
  }
  if (v >= INT32_MIN && v <= INT32_MAX) {
    p[0] = T_INT32;
    put_le(p + 1, (uint64_t)v, 4);
    return p + 5;
  }
  p[0] = T_INT64;
  put_le(p + 1, (uint64_t)v, 8);
  return p + 9;
}

/* a float at 'p', in 9 bytes */
static inline unsigned char *float_to (unsigned char *p, lua_Number x) {
  double d = (double)x;
  uint64_t bits;
  memcpy(&bits, &d, sizeof(bits));
  p[0] = T_FLOAT;
  put_le(p + 1, bits, 8);
  return p + 9;
}

static void put_integer (Encoder *e, lua_Integer v) {
  unsigned char *p = reserve(e, 9);
  buffer_unreserve(e->b, (size_t)(p + 9 - integer_to(p, v)));
}


static void put_float (Encoder *e, lua_Number x) {
  float_to(reserve(e, 9), x);
}


static int cannot (Encoder *e, int idx) {
  lua_State *L = e->L;
  const char *what;
  if (lua_type(L, idx) == LUA_TUSERDATA &&
      luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
    what = lua_pushfstring(L, "cannot transfer a userdata (%s)",
                           lua_tostring(L, -1));
  else if (lua_iscfunction(L, idx))
    what = lua_getupvalue(L, idx, 1) != NULL
         ? "cannot transfer a C function with upvalues"
         : "cannot transfer a C function that has no name in package.loaded";
  else
    what = lua_pushfstring(L, "cannot transfer a %s", luaL_typename(L, idx));
  return fail(e, what);
}


/*
** A value that travels by name: its name ("module" or "module\0field")
** is on top, and is popped.  The module goes into the names section once.
*/
static void put_name (Encoder *e, const char *name, size_t len) {
  lua_State *L = e->L;
  size_t modlen = strlen(name);
  lua_Integer i;
  if (lua_isnil(L, e->used)) {
    lua_newtable(L);
    lua_replace(L, e->used);
  }
  lua_pushlstring(L, name, modlen);
  if (lua_rawget(L, e->used) == LUA_TNUMBER)
    i = lua_tointeger(L, -1);
  else {
    i = ++e->nused;
    lua_pushlstring(L, name, modlen);
    lua_pushinteger(L, i);
    lua_rawset(L, e->used);
    lua_pushlstring(L, name, modlen);
    lua_rawseti(L, e->used, i);
  }
  lua_pop(L, 1);
  if (modlen == len)
    put_varint(e, T_MODULE, (uint64_t)i);
  else {
    put_varint(e, T_FIELD, (uint64_t)i);
    put_raw(e, name + modlen + 1, len - modlen - 1);
  }
  lua_pop(L, 1);
}


static void encode (Encoder *e, int idx);


/*
** Calls of __isolate and of constructors under way on this thread.  Each
** may transfer again (another codec's levels on the same C stack), so
** they nest at most ISOLATE_CODEC_NEST deep.  Each is a protected call:
** no error skips the count back.
*/
static _Thread_local int nested;


/*
** The hash of an address is the address: objects made one after another,
** as a program builds its data, are met one after another, and their
** slots follow each other in memory too.
*/
static SeenSlot *seen_slot (Seen *s, const void *p) {
  size_t i;
  for (i = ((uintptr_t)p >> 4) & s->mask; s->slot[i].p != NULL && s->slot[i].p != p;
       i = (i + 1) & s->mask) ;
  return &s->slot[i];
}

/*
** The hash lives in memory of its own (a Buffer owned by a userdata at
** 'seen', freed when the encoder ends or by its __gc after an error), not
** in Lua's heap: a table of a million slots made there would count toward
** Lua's collector, which would then traverse the whole heap to pay for it.
** The tables it outgrew stay in the buffer until the end (half the
** memory at most).
*/
static void seen_grow (Encoder *e) {
  lua_State *L = e->L;
  Seen *old = e->seenp, *s;
  size_t cap = old == NULL ? 64 : 2 * (old->mask + 1), i;
  size_t size = sizeof(Seen) + (cap - 1) * sizeof(SeenSlot);
  if (old == NULL) {
    e->seenmem = buffer_push(L);
    lua_replace(L, e->seen);
  }
  if ((s = (Seen *)buffer_reserve(e->seenmem, size)) == NULL) nomem(e);
  memset(s, 0, size);
  s->mask = cap - 1;
  if (old != NULL) {
    for (i = 0; i <= old->mask; i++)
      if (old->slot[i].p != NULL) *seen_slot(s, old->slot[i].p) = old->slot[i];
    s->count = old->count;
  }
  else {
    lua_newtable(L);
    lua_replace(L, e->kept);
  }
  e->seenp = s;
}

/* the id of the object at 'idx' becomes 'id' (it was met) */
static void seen_setid (Encoder *e, int idx, lua_Integer id) {
  seen_slot(e->seenp, lua_topointer(e->L, idx))->id = id;
}

/* emit a T_REF and return 1 if the table or function was met before */
static int seen_before (Encoder *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  SeenSlot *s;
  if (e->seenp == NULL || 2 * (e->seenp->count + 1) > e->seenp->mask + 1)
    seen_grow(e);
  s = seen_slot(e->seenp, p);
  if (s->p != NULL) {
    if (s->id < 0)		/* an object being made: encode_object */
      fail(e, "cannot transfer an object that its own __isolate results contain");
    put_varint(e, T_REF, (uint64_t)s->id);
    return 1;
  }
  s->p = p;
  s->id = ++e->nextid;
  e->seenp->count++;
  lua_pushvalue(L, idx);
  lua_rawseti(L, e->kept, e->nextid);
  return 0;
}


/* a table key that is a string: a short one met before is a T_KEYREF */
static void put_key (Encoder *e, int idx) {
  size_t len;
  const char *s = lua_tolstring(e->L, idx, &len);
  KeySlot *k;
  if (len > SHORTSTR_MAX) {
    encode(e, idx);
    return;
  }
  k = &e->keys[((uintptr_t)s >> 4 ^ len) % KEYCACHE];
  if (k->p == s && k->len == len && memcmp(k->bytes, s, len) == 0) {
    put_varint(e, T_KEYREF, k->id);
    return;
  }
  put_string(e, s, len);
  k->p = s;
  k->len = (unsigned char)len;
  memcpy(k->bytes, s, len);
  k->id = ++e->nkeys;
}


/* a pinned string's length (its bytes are read), 0 for other values */
static size_t length (lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING ? lua_rawlen(L, idx) : 0;
}

/* the value at 'idx' stays alive as long as the message: it borrows from it */
static void pin (Encoder *e, int idx) {
  lua_State *L = e->L;
  const void **p;
  if (e->borrow == 0) return;	/* (the caller keeps its values alive) */
  if (lua_isnil(L, e->pins)) {
    lua_newtable(L);
    lua_replace(L, e->pins);
    e->pinned = buffer_push(L);
    lua_replace(L, e->pinnedat);
  }
  if ((p = (const void **)buffer_reserve(e->pinned, 2 * sizeof(*p))) == NULL) nomem(e);
  p[0] = lua_topointer(L, idx);
  p[1] = (const void *)(uintptr_t)length(L, idx);
  lua_pushvalue(L, idx);
  lua_rawseti(L, e->pins, ++e->npins);
}


/*
** Lua code that ran while the message was encoded (an __isolate) could
** reach the pins with the debug library and drop them, and have what the
** message borrows collected: each pin must still be what it was, or the
** message is refused.  (Their addresses and lengths are kept where Lua
** cannot reach.)
*/
static void checkpins (Encoder *e) {
  lua_State *L = e->L;
  Reader r;
  lua_Integer k;
  reader_init(&r, e->pinned);
  for (k = 1; k <= e->npins; k++) {
    const void *const *was = (const void *const *)reader_take(&r, 2 * sizeof(*was));
    lua_rawgeti(L, e->pins, k);
    if (lua_topointer(L, -1) != was[0] ||
        (const void *)(uintptr_t)length(L, -1) != was[1]) {
      e->depth = 0;		/* (no path: not one value's fault) */
      fail(e, "a value that the message borrows was dropped while it was "
              "encoded (by an __isolate)");
    }
    lua_pop(L, 1);
  }
}


/*
** What the C function that encodes or decodes holds on its stack (the
** values being sent or made, the codec's tables, the keys it iterates
** with), as it was before an __isolate or a constructor ran: with the
** debug library, Lua code can replace any of them, and the codec would
** then use a table that is none.
*/
typedef struct Slot {
  const void *p;
  int type;
} Slot;

/*
** The slots that matter, in up to three ranges: those of the C function
** below what the codec sends or makes, the top-level value being sent or
** made and the codec's tables, and what the codec works on (the nesting),
** below the function called.  Values done or not yet begun are none of
** its concern: so a look costs what the nesting is deep, not what the
** values are many.
*/
typedef struct Stack {
  int lo[3], hi[3];		/* inclusive; lo > hi: none */
  Slot *s;
} Stack;

static void look (lua_State *L, Slot *s, int i) {
  s->type = lua_type(L, i);
  s->p = lua_topointer(L, i);
}

static void snapshot (lua_State *L, Stack *k) {
  int r, i, n = 0;
  for (r = 0; r < 3; r++) n += k->hi[r] >= k->lo[r] ? k->hi[r] - k->lo[r] + 1 : 0;
  if ((k->s = (Slot *)malloc(sizeof(Slot) * (size_t)(n > 0 ? n : 1))) == NULL) {
    lua_pushliteral(L, "not enough memory");	/* (Lua's memory error) */
    lua_error(L);
  }
  n = 0;
  for (r = 0; r < 3; r++)
    for (i = k->lo[r]; i <= k->hi[r]; i++) look(L, &k->s[n++], i);
}

/* 1 if the slots are as they were; frees the snapshot */
static int unchanged (lua_State *L, Stack *k) {
  int r, i, n = 0, same = 1;
  Slot now;
  for (r = 0; r < 3; r++)
    for (i = k->lo[r]; same && i <= k->hi[r]; i++, n++) {
      look(L, &now, i);
      same = now.type == k->s[n].type && now.p == k->s[n].p;
    }
  free(k->s);
  return same;
}

static void ranges (Stack *k, int lo0, int hi0, int lo1, int hi1, int lo2, int hi2) {
  k->lo[0] = lo0; k->hi[0] = hi0;
  k->lo[1] = lo1; k->hi[1] = hi1;
  k->lo[2] = lo2; k->hi[2] = hi2;
}


/*
** An object (a table or a full userdata) whose metatable has __isolate
** travels as what __isolate(obj) returns: a constructor that can travel
** and its arguments.  The other side calls the constructor once, and a
** second reference to the object in this transfer is that same result.
** While its results are encoded, the object's id is negative, so that
** an object that its own results contain is refused (seen_before).
** Returns 0, with nothing written, if the object has no __isolate.
*/
static int encode_object (Encoder *e, int idx) {
  lua_State *L = e->L;
  int top = lua_gettop(L), n, i, status;
  Stack was;
  lua_Integer id;
  int t = luaL_getmetafield(L, idx, "__isolate");
  if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
    lua_settop(L, top);
    return 0;			/* none (false: none either) */
  }
  if (e->role == ROLE_MEASURE) {	/* nothing runs */
    lua_settop(L, top);
    put1(e, T_NIL);
    return 1;
  }
  if (seen_before(e, idx)) {
    lua_settop(L, top);
    return 1;
  }
  id = e->nextid;
  seen_setid(e, idx, -id);
  enter(e);
  if (nested >= ISOLATE_CODEC_NEST)
    fail(e, "C stack overflow (transfers nested in __isolate)");
  lua_pushvalue(L, idx);
  ranges(&was, 1, e->first - 1, e->value, e->value, e->globals, top);
  snapshot(L, &was);
  nested++;
  e->ran = 1;
  status = lua_pcall(L, 1, LUA_MULTRET, 0);
  nested--;
  if (!unchanged(L, &was)) {
    e->depth = 0;		/* (its path is on that stack too) */
    fail(e, "an __isolate changed the values being sent (with the debug library)");
  }
  names_reset(L, &e->names);	/* Lua code ran: it may have loaded modules */
  if (status == LUA_ERRMEM) lua_error(L);	/* a memory error stays one */
  if (status != LUA_OK)
    fail(e, lua_pushfstring(L, "__isolate failed: %s", lua_isstring(L, -1)
                            ? lua_tostring(L, -1) : luaL_typename(L, -1)));
  n = lua_gettop(L) - top;
  if (n == 0 || !lua_isfunction(L, top + 1))
    fail(e, lua_pushfstring(L, "__isolate must return a constructor (a function) "
                            "and its arguments, not %s",
                            n == 0 ? "nothing" : luaL_typename(L, top + 1)));
  isolate_checkstack(L, 8);
  put_varint(e, T_OBJECT, (uint64_t)n);
  e->b->borrowed++;		/* its sender must outlive the message (buffer.h) */
  pin(e, idx);
  step(e, S_OBJECT, 0, 0, NULL);
  for (i = 1; i <= n; i++) {
    e->path[e->depth - 1].n = i;
    encode(e, top + i);
  }
  unstep(e);
  lua_settop(L, top);
  seen_setid(e, idx, id);
  leave(e);
  return 1;
}


/*
** io.stdin, io.stdout and io.stderr travel by name: on the other side,
** they are its own.  A file is one of them if it is open on the C
** library's stdin, stdout or stderr, whatever io.stdout holds now (a
** script may have put a log file there: that one stays a file, refused).
** Returns 0 if the userdata at 'idx' is none of them.
*/
static int encode_stream (Encoder *e, int idx) {
  static const char *const names[] = {"io\0stdin", "io\0stdout", "io\0stderr"};
  static const size_t lens[] = {8, 9, 9};
  luaL_Stream *f = (luaL_Stream *)luaL_testudata(e->L, idx, LUA_FILEHANDLE);
  int i;
  if (f == NULL || f->closef == NULL) return 0;
  i = f->f == stdin ? 0 : f->f == stdout ? 1 : f->f == stderr ? 2 : -1;
  if (i < 0) return 0;
  lua_pushlstring(e->L, names[i], lens[i]);
  put_name(e, lua_tostring(e->L, -1), lens[i]);
  return 1;
}


/*
** The values at 1, 2, ... of the table at 't' that are in its array part,
** up to the first nil, read in place: numbers and booleans are written as
** they are, RUN at a time, and anything else is pushed through the API
** and encoded.  That may run Lua (__isolate, finalizers), which may
** change the table: the array is found afresh after it.  Returns how
** many values were written.
*/
#define RUN	256		/* values written a reservation at a time */

/* the size of an array part, as a count that a message can hold */
#define ASIZE(h)	(lt_asize(h) < UINT32_MAX - 1 ? lt_asize(h) : UINT32_MAX - 1)

static lua_Integer encode_array (Encoder *e, int t, int top) {
  lua_State *L = e->L;
  const LTable *h = (const LTable *)lua_topointer(L, t);
  Step *s = &e->path[e->depth - 1];
  lua_Integer i = 0, n = ASIZE(h);
  while (i < n) {
    lua_Integer last = i + RUN < n ? i + RUN : n;
    size_t most = 9 * (size_t)(last - i);	/* (a float or an integer: 9 bytes at most) */
    unsigned char *p = reserve(e, most), *q = p;
    const LTValue *v = &h->array[i];
    for (; i < last; i++, v++) {
      if (v->tt_ == LT_INT) q = integer_to(q, v->value_.i);
      else if (v->tt_ == LT_FLOAT) q = float_to(q, v->value_.n);
      else if (v->tt_ == LT_FALSE) *q++ = T_FALSE;
      else if (v->tt_ == LT_TRUE) *q++ = T_TRUE;
      else break;
    }
    buffer_unreserve(e->b, (size_t)(p + most - q));
    if (i == last) continue;
    if (lt_isnil(v)) break;
    s->n = i + 1;		/* anything else, through the API */
    lua_rawgeti(L, t, i + 1);
    encode(e, top + 1);
    lua_settop(L, top);
    i++;
    n = ASIZE(h);		/* Lua may have run: it may have changed the table */
  }
  return i;
}


/*
** The number of slots of the array part of the table at 't' that a result
** lends (T_LENT): all of them up to the first nil must be numbers or
** booleans, and be ISOLATE_LEND or more.  0: it does not lend.
*/
static lua_Integer lendable (Encoder *e, int t) {
  const LTable *h = (const LTable *)lua_topointer(e->L, t);
  lua_Integer i, n = ASIZE(h);
  const LTValue *v = h->array;
  if (n < ISOLATE_LEND) return 0;
  for (i = 0; i < n && lt_isscalar(v); i++, v++) ;
  if (i < n && !lt_isnil(v)) return 0;	/* something else: encoded */
  return i >= ISOLATE_LEND ? i : 0;
}


static void encode_table (Encoder *e, int t) {
  lua_State *L = e->L;
  lua_Integer narr = 0, lent = 0;
  uint32_t nhash = 0;
  unsigned char *counts;
  int hasmt, top;
  const char *name;
  size_t len;
  Step *s;
  if (lua_rawequal(L, t, e->globals)) {
    put1(e, T_GLOBALS);
    return;
  }
  if ((name = names_find(L, &e->names, t, &len)) != NULL) {
    put_name(e, name, len);
    return;
  }
  if (encode_object(e, t) || seen_before(e, t)) return;
  enter(e);
  hasmt = lua_getmetatable(L, t);
  top = lua_gettop(L);		/* the metatable, if any */
  counts = reserve(e, 9);	/* tag, narr, nhash */
  counts[0] = hasmt ? T_TABLEMT : T_TABLE;
  if (e->lend && !hasmt && (lent = narr = lendable(e, t)) > 0) {
    counts[0] = T_LENT;
    put_le(reserve(e, 8), (uint64_t)(uintptr_t)lua_topointer(L, t), 8);
    e->b->borrowed += (size_t)narr * sizeof(LTValue);
    pin(e, t);
  }
  step(e, S_INDEX, 0, 0, NULL);
  s = &e->path[e->depth - 1];
  if (lent == 0 && e->inplace) narr = encode_array(e, t, top);
  if (narr > 0)
    lua_pushinteger(L, narr);	/* in the array part: next goes on from there */
  else lua_pushnil(L);
  while (lua_next(L, t)) {	/* key at top + 1, value at top + 2 */
    int kind = S_KEYOF;
    if (lua_isinteger(L, top + 1)) {
      lua_Integer k = lua_tointeger(L, top + 1);
      if (nhash == 0 && k == narr + 1 && narr < UINT32_MAX && lent == 0) {
        s->kind = S_INDEX;
        s->n = ++narr;
        encode(e, top + 2);
        lua_pop(L, 1);
        continue;
      }
      kind = S_INDEX;
      s->n = k;
    }
    else if (lua_type(L, top + 1) == LUA_TSTRING)
      kind = S_FIELD;
    s->kind = S_KEY;
    s->idx = top + 1;
    if (kind == S_FIELD) put_key(e, top + 1);
    else encode(e, top + 1);
    s->kind = kind;		/* (a field's name is read from its key if needed) */
    encode(e, top + 2);
    lua_pop(L, 1);
    if (++nhash == UINT32_MAX) fail(e, "table too large");
  }
  unstep(e);
  put_le(counts + 1, (uint64_t)narr, 4);
  put_le(counts + 5, nhash, 4);
  if (hasmt) {
    step(e, S_METATABLE, 0, 0, NULL);
    encode(e, top);
    unstep(e);
    lua_pop(L, 1);
  }
  leave(e);
}


static int count_writer (lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L; (void)p;
  *(size_t *)ud += sz;
  return 0;
}

static int copy_writer (lua_State *L, const void *p, size_t sz, void *ud) {
  unsigned char **dst = (unsigned char **)ud;
  (void)L;
  memcpy(*dst, p, sz);
  *dst += sz;
  return 0;
}


/*
** A C function travels by name only.  A Lua function travels as its
** bytecode, dumped twice: once to count its size, once straight into a
** reservation of that size, so no temporary copy exists that a Lua error
** could leak.  Each upvalue is a value, except _ENV (always the
** destination's globals) and an upvalue already sent with an earlier
** closure (a T_UPREF, joined on decoding so the two still share it).
*/
static void encode_function (Encoder *e, int f) {
  lua_State *L = e->L;
  lua_Debug ar;
  lua_Integer id;
  size_t size = 0;
  unsigned char *dst;
  int i, top;
  if (lua_iscfunction(L, f)) {
    size_t len;
    const char *name = names_find(L, &e->names, f, &len);
    if (name == NULL) cannot(e, f);
    put_name(e, name, len);
    return;
  }
  if (seen_before(e, f)) return;
  id = e->nextid;
  enter(e);
  lua_pushvalue(L, f);
  lua_dump(L, count_writer, &size, 0);
  put_varint(e, T_FUNCTION, size);
  dst = reserve(e, size);
  lua_dump(L, copy_writer, &dst, 0);
  lua_getinfo(L, ">u", &ar);	/* pops the function */
  put_varint(e, -1, ar.nups);
  if (lua_isnil(L, e->upvals)) {
    lua_newtable(L);
    lua_replace(L, e->upvals);
  }
  top = lua_gettop(L);
  for (i = 1; i <= ar.nups; i++) {
    const char *name = lua_getupvalue(L, f, i);	/* value at top + 1 */
    void *uid = lua_upvalueid(L, f, i);
    if (strcmp(name, "_ENV") == 0)
      put1(e, T_GLOBALS);
    else if (lua_rawgetp(L, e->upvals, uid) == LUA_TNUMBER) {
      lua_Integer ref = lua_tointeger(L, -1);
      put_varint(e, T_UPREF, (uint64_t)(ref >> 8));
      put_varint(e, -1, (uint64_t)(ref & 0xff) + 1);
    }
    else {
      lua_pushinteger(L, id * 256 + (i - 1));
      lua_rawsetp(L, e->upvals, uid);
      step(e, S_UPVALUE, f, 0, name);
      encode(e, top + 1);
      unstep(e);
    }
    lua_settop(L, top);
  }
  leave(e);
}


static void encode (Encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put1(e, T_NIL); break;
    case LUA_TBOOLEAN: put1(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) put_integer(e, lua_tointeger(L, idx));
      else put_float(e, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (e->borrow != 0 && len >= e->borrow) {
        unsigned char *p;
        put_varint(e, T_BORROWED, len);
        p = reserve(e, 8);
        put_le(p, (uint64_t)(uintptr_t)s, 8);
        e->b->borrowed += len;
        pin(e, idx);
      }
      else put_string(e, s, len);
      break;
    }
    case LUA_TTABLE: encode_table(e, idx); break;
    case LUA_TFUNCTION: encode_function(e, idx); break;
    case LUA_TLIGHTUSERDATA: {
      unsigned char *p = reserve(e, 9);
      p[0] = T_LIGHTUD;
      put_le(p + 1, (uint64_t)(uintptr_t)lua_touserdata(L, idx), 8);
      break;
    }
    case LUA_TUSERDATA:
      if (!encode_stream(e, idx) && !encode_object(e, idx)) cannot(e, idx);
      break;
    default: cannot(e, idx);	/* a coroutine */
  }
}


/* the names section, and its offset patched into the header */
static void put_names (Encoder *e, unsigned char *offset, size_t start) {
  lua_State *L = e->L;
  lua_Integer i;
  if (e->nused == 0) return;
  put_le(offset, (uint64_t)(e->b->total - start), OFFSET_SIZE);
  put_varint(e, -1, (uint64_t)e->nused);
  for (i = 1; i <= e->nused; i++) {
    size_t len;
    const char *name;
    lua_rawgeti(L, e->used, i);
    name = lua_tolstring(L, -1, &len);
    put_raw(e, name, len);
    lua_pop(L, 1);
  }
}


/*
** Append one message holding the 'n' values from stack index 'first'.
** On error (what cannot travel, memory) the buffer holds part of it: its
** owner frees or resets it.  The stack is as it was on return.
*/
static void encodelist (lua_State *L, Buffer *b, int first, int n, Role role,
                        lua_Integer base, lua_Integer *failed, size_t borrow);

void codec_encode (lua_State *L, Buffer *b, int first, int n, Role role) {
  encodelist(L, b, first, n, role, 0, NULL, 0);
}


void codec_encodeborrowing (lua_State *L, Buffer *b, int first, int n, Role role) {
  encodelist(L, b, first, n, role, 0, NULL, ISOLATE_BORROW);
}


void codec_encodelist (lua_State *L, Buffer *b, int first, int n, Role role,
                       lua_Integer base, lua_Integer *failed) {
  encodelist(L, b, first, n, role, base, failed, 0);
}


static void encodelist (lua_State *L, Buffer *b, int first, int n, Role role,
                        lua_Integer base, lua_Integer *failed, size_t borrow) {
  static const int stepkind[] = {S_ARG, S_RESULT, S_VALUE, S_ITEM, S_ITEMRESULT, S_VALUE};
  Encoder e;
  int top = lua_gettop(L), i;
  size_t start = b->total;
  unsigned char *offset;
  e.L = L;
  e.b = b;
  e.role = role;
  e.failed = failed;
  e.borrow = borrow;
  e.nextid = 0;
  e.nused = 0;
  e.nest = 0;
  e.depth = 0;
  isolate_checkstack(L, 8);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = top + 1;
  e.first = first;
  lua_settop(L, top + 7);	/* five tables and a userdata, made when needed */
  e.seen = top + 2;
  e.upvals = top + 3;
  e.used = top + 4;
  e.kept = top + 5;
  e.pins = top + 6;
  e.npins = 0;
  e.pinnedat = top + 7;
  e.pinned = NULL;
  e.ran = 0;
  e.seenp = NULL;
  e.seenmem = NULL;
  e.nkeys = 0;
  e.inplace = intable_usable(L);
  e.lend = e.inplace && borrow != 0 && role == ROLE_RESULT;
  memset(e.keys, 0, sizeof(e.keys));
  names_open(L, &e.names);
  if (!w_bytes(b, magic, sizeof(magic)) || !w_tagvarint(b, -1, (uint64_t)n))
    nomem(&e);
  offset = reserve(&e, OFFSET_SIZE);
  put_le(offset, 0, OFFSET_SIZE);
  for (i = 0; i < n; i++) {
    step(&e, stepkind[role], 0, base + i + 1, NULL);
    e.value = first + i;
    encode(&e, first + i);
    unstep(&e);
  }
  put_names(&e, offset, start);
  if (e.ran && e.npins > 0) checkpins(&e);
  if (e.seenmem != NULL) buffer_free(e.seenmem);	/* now, not at the next cycle */
  if (e.pinned != NULL) buffer_free(e.pinned);
  if (borrow != 0) {		/* what it borrows: the caller keeps it */
    lua_pushvalue(L, e.pins);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
  }
  else lua_settop(L, top);
}

/* }====================================================== */


/*
** {======================================================
** Decoding
** =======================================================
*/

typedef struct Decoder {
  lua_State *L;
  Reader *r;
  int flags;
  int refs;			/* stack index: id -> table or function */
  int names;			/* stack index: i -> module (trusted input) */
  int keys;			/* stack index: id -> short string key (made when needed) */
  lua_Integer nextid, nnames, nkeys;
  size_t end;			/* reader position where the values end */
  size_t promised;		/* bytes owed to elements counted, not yet read */
  int depth;
  int inplace;			/* numbers are written into array parts (luatable.h) */
  int value;			/* stack index where the value being made starts */
} Decoder;


static int bad (Decoder *d, const char *why) {
  return luaL_error(d->L, "isolate: cannot decode: %s (at byte %I)", why,
                    (LUAI_UACINT)d->r->pos);
}

static int refused (Decoder *d, const char *what) {
  return luaL_error(d->L, "isolate: cannot decode: %s refused "
                    "(decode trusted input with {trusted = true}) (at byte %I)",
                    what, (LUAI_UACINT)d->r->pos);
}

/* bytes that the values may still take: what remains less what is owed */
static inline size_t available (Decoder *d) {
  return d->end - d->r->pos - d->promised;
}

static inline const unsigned char *take (Decoder *d, size_t n) {
  const unsigned char *p = NULL;
  if (n > available(d) || (p = reader_take(d->r, n)) == NULL)
    bad(d, "truncated input");
  return p;
}

/* 'n' more elements, each owed at least one byte */
static void promise (Decoder *d, uint64_t n, const char *what) {
  if (n > available(d)) bad(d, what);
  d->promised += (size_t)n;
}

static inline uint64_t get_le (const unsigned char *p, int n) {
  uint64_t v = 0;
  int i;
  if (LITTLE_ENDIAN_HOST) memcpy(&v, p, (size_t)n);
  else for (i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static int get_varint (Reader *r, uint64_t *v) {
  int shift;
  *v = 0;
  for (shift = 0; shift < 64; shift += 7) {
    const unsigned char *p = reader_take(r, 1);
    if (p == NULL) return 0;
    *v |= (uint64_t)(*p & 0x7f) << shift;
    if (!(*p & 0x80)) return 1;
  }
  return 0;
}

static uint64_t varint (Decoder *d) {
  uint64_t v = 0;
  if (available(d) == 0 || !get_varint(d->r, &v) || d->r->pos > d->end - d->promised)
    bad(d, "truncated or overlong length");
  return v;
}


const char *codec_getstring (Reader *r, size_t *len) {
  uint64_t n;
  const unsigned char *p;
  if (!get_varint(r, &n) || n > r->left || (p = reader_take(r, n)) == NULL)
    return NULL;
  *len = (size_t)n;
  return (const char *)p;
}


/* a length and that many bytes, as a plain string */
static const char *rawstring (Decoder *d, size_t *len) {
  uint64_t n = varint(d);
  if (n > available(d)) bad(d, "truncated input");
  *len = (size_t)n;
  return (const char *)take(d, (size_t)n);
}


/*
** {======================================================
** Big values in prefaulted memory (ISOLATE_PREFAULT)
** =======================================================
*/

/*
** An isolate's own allocator maps in the big value's block itself
** (state_prefault).  Another state's allocator is wrapped for one
** protected call that makes the big string or table: the first fresh
** block of 'size' bytes or more, the big value's, is mapped in before Lua
** writes it, and the wrapper takes itself out then, when an allocation
** fails (before Lua's emergency collection), or when the call ends, by
** an error too ("table overflow").  Lua steps its collector after the
** big block, not before, except when the protected call grows the stack:
** a finalizer that runs then has its allocations passed on (a big one
** mapped in, and the wrapper out), and a decode in it wraps the wrapper.
** (Not in an isolate's state, which a cancel's signal handler tells by
** its allocator.)
*/
typedef struct Prefault {
  lua_State *L;
  lua_Alloc f;
  void *ud;
  size_t size;
  const char *s;		/* the string to make, or NULL: */
  size_t len;
  int narr, nhash;		/* the table */
} Prefault;

static void *prefaulting (void *ud, void *ptr, size_t osize, size_t nsize) {
  Prefault *pf = (Prefault *)ud;
  void *block = pf->f(pf->ud, ptr, osize, nsize);
  if (block == NULL && nsize > 0) lua_setallocf(pf->L, pf->f, pf->ud);
  else if (ptr == NULL && nsize >= pf->size) {
    buffer_mapin(block, nsize);
    lua_setallocf(pf->L, pf->f, pf->ud);
  }
  return block;
}

static void make (lua_State *L, const Prefault *pf) {
  if (pf->s != NULL) lua_pushlstring(L, pf->s, pf->len);
  else lua_createtable(L, pf->narr, pf->nhash);
}

static int makebig (lua_State *L) {
  make(L, (const Prefault *)lua_touserdata(L, 1));
  return 1;
}

static void pushbig (Prefault *pf, lua_State *L, size_t size) {
  void *ud;
  int status;
  if (state_prefault(L, size)) {
    make(L, pf);
    state_prefault(L, 0);	/* (an error leaves it for one later big block) */
    return;
  }
  pf->L = L;
  pf->size = size;
  lua_pushcfunction(L, makebig);
  lua_pushlightuserdata(L, pf);
  pf->f = lua_getallocf(L, &pf->ud);
  lua_setallocf(L, prefaulting, pf);
  status = lua_pcall(L, 1, 1, 0);
  if (lua_getallocf(L, &ud) == prefaulting && ud == pf)	/* not taken out */
    lua_setallocf(L, pf->f, pf->ud);
  if (status != LUA_OK) lua_error(L);
}


/* push the string of 'len' bytes at 's' */
static void pushstring (lua_State *L, const char *s, size_t len) {
  Prefault pf;
  if (len < ISOLATE_PREFAULT) {
    lua_pushlstring(L, s, len);
    return;
  }
  pf.s = s;
  pf.len = len;
  pushbig(&pf, L, len);
}


/* push a new table, its array part of 'narr' slots made in place */
static void newtable (lua_State *L, int narr, int nhash) {
  Prefault pf;
  if ((size_t)narr < ISOLATE_PREFAULT / sizeof(LTValue)) {
    lua_createtable(L, narr, nhash);
    return;
  }
  pf.s = NULL;
  pf.narr = narr;
  pf.nhash = nhash;
  pushbig(&pf, L, (size_t)narr * sizeof(LTValue));
}

/* }====================================================== */


static void dec_enter (Decoder *d) {
  if (++d->depth > ISOLATE_MAXDEPTH)
    bad(d, "value nested too deeply (more than " LEVELS " levels)");
  isolate_checkstack(d->L, 8);
}

#define dec_leave(d)	((d)->depth--)

static void newref (Decoder *d) {
  if (lua_isnil(d->L, d->refs)) {
    lua_newtable(d->L);
    lua_replace(d->L, d->refs);
  }
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->refs, ++d->nextid);
}


static void decode (Decoder *d, int tag);

/* one of the elements promised: its tag is the byte it was owed */
static inline void decode_next (Decoder *d) {
  d->promised--;
  decode(d, *take(d, 1));
}


/*
** A key of a table's other pairs: a short string is numbered, as the
** encoder numbered it, and a T_KEYREF is one numbered before.
*/
static void decode_key (Decoder *d) {
  lua_State *L = d->L;
  int tag;
  d->promised--;
  tag = *take(d, 1);
  if (tag == T_KEYREF) {
    uint64_t id = varint(d);
    if (id < 1 || id > (uint64_t)d->nkeys) bad(d, "bad key reference");
    lua_rawgeti(L, d->keys, (lua_Integer)id);
    return;
  }
  decode(d, tag);
  if (tag >= T_SHORTSTR && tag <= T_SHORTSTR + SHORTSTR_MAX) {
    if (lua_isnil(L, d->keys)) {
      lua_newtable(L);
      lua_replace(L, d->keys);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->keys, ++d->nkeys);
  }
  else if ((tag == T_NIL || tag == T_FLOAT || tag == T_OBJECT || tag == T_REF ||
            tag == T_MODULE) &&
           (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                                 lua_tonumber(L, -1) != lua_tonumber(L, -1))))
    bad(d, "table key is nil or NaN");	/* only these tags can make one */
}


/* the payload of an integer with 'tag' (T_INT8...T_INT64) at 'p' */
static inline lua_Integer integer_at (int tag, const unsigned char *p) {
  switch (tag) {
    case T_INT8: return (int8_t)*p;
    case T_INT16: return (int16_t)get_le(p, 2);
    case T_INT32: return (int32_t)get_le(p, 4);
    default: return (lua_Integer)get_le(p, 8);
  }
}

static inline lua_Number float_at (const unsigned char *p) {
  uint64_t bits = get_le(p, 8);
  double x;
  memcpy(&x, &bits, sizeof(x));
  return (lua_Number)x;
}

/*
** The bytes after the tag of a nil, a boolean or a number (tag < T_STRING),
** byte 'tag' of a constant: T_NIL, T_FALSE and T_TRUE 0, T_INT8 ... T_INT64
** 1, 2, 4, 8, T_FLOAT 8.  (A shift, not a load from a table: decode_run
** finds where each value starts from the size of the one before.)
*/
#define payload(tag)	((int)((0x0808040201000000ull >> (8 * (tag))) & 0xff))


/*
** Elements 'i', 'i' + 1, ... of the array part 'h' of a table being
** made, up to 'narr', written in place while they are nils, booleans or
** numbers (as lua_rawseti would write them) and lie whole in the reader's
** current block; each is owed its tag byte, and its payload must fit in
** what is available, as take() would check.  Returns the first element
** not written, which the caller decodes through the API.
*/
static uint64_t decode_run (Decoder *d, const LTable *h, uint64_t i, uint64_t narr) {
  Reader *r = d->r;
  const unsigned char *p = r->p, *start = p, *end = r->end;
  size_t slack = available(d);	/* as it will be once a tag is taken */
  uint64_t first = i;
  LTValue *v = h->array + (i - 1);	/* (i <= narr <= the array's size) */
  for (; i <= narr && p < end; i++, v++) {
    int tag = *p, n;
    if (tag >= T_SMALLINT) {
      v->value_.i = tag - T_SMALLINT;
      v->tt_ = LT_INT;
      p++;
      continue;
    }
    if (tag >= T_STRING || (n = payload(tag)) > (ptrdiff_t)slack || n >= end - p)
      break;
    if (tag == T_FLOAT) {
      v->value_.n = float_at(p + 1);
      v->tt_ = LT_FLOAT;
    }
    else if (tag >= T_INT8) {
      v->value_.i = integer_at(tag, p + 1);
      v->tt_ = LT_INT;
    }
    else v->tt_ = tag == T_TRUE ? LT_TRUE : tag == T_FALSE ? LT_FALSE : LT_NIL;
    p += 1 + n;
    slack -= (size_t)n;
  }
  r->p = p;
  r->left -= (size_t)(p - start);
  r->pos += (size_t)(p - start);
  d->promised -= (size_t)(i - first);
  return i;
}


/*
** The slots that a T_LENT lends, from the table of this process at 'src'
** into the array part 'h' of the table being made.  The lender's state
** is idle until the message is decoded, but an __isolate of a later
** result may have changed its table meanwhile: a nil is copied as one,
** and what is not a nil, a number or a boolean now is refused.
*/
static void copy_lent (Decoder *d, const LTable *src, const LTable *h, uint64_t narr) {
  const LTValue *from;
  LTValue *to = h->array;
  uint64_t i;
  if (lt_asize(src) < narr || lt_asize(h) < narr)
    bad(d, "a lent table changed before it was decoded");
  for (i = 0, from = src->array; i < narr; i++, from++, to++) {
    if (lt_isscalar(from)) *to = *from;
    else if (lt_isnil(from)) to->tt_ = LT_NIL;
    else bad(d, "a lent table changed before it was decoded");
  }
}


static void decode_table (Decoder *d, int tag) {
  lua_State *L = d->L;
  const unsigned char *counts = take(d, 8);
  uint64_t narr = get_le(counts, 4), nhash = get_le(counts + 4, 4), i;
  const LTable *h, *lender = NULL;
  int t, hasmt = (tag == T_TABLEMT);
  if (tag == T_LENT) {		/* only in a message of this process */
    if (!(d->flags & CODEC_BORROWED) || !d->inplace) bad(d, "unknown tag");
    lender = (const LTable *)(uintptr_t)get_le(take(d, 8), 8);
    if (lt_asize(lender) < narr) bad(d, "a lent table changed before it was decoded");
    promise(d, 2 * nhash, "table larger than its input");
  }
  else promise(d, narr + 2 * nhash + (hasmt ? 1 : 0), "table larger than its input");
  dec_enter(d);
  newtable(L, narr > INT_MAX ? INT_MAX : (int)narr,
           nhash > INT_MAX ? INT_MAX : (int)nhash);
  t = lua_gettop(L);
  newref(d);
  h = (const LTable *)lua_topointer(L, t);
  if (lender != NULL) {
    copy_lent(d, lender, h, narr);
    narr = 0;			/* (done) */
  }
  if (!d->inplace || lt_asize(h) < narr) h = NULL;
  for (i = 1; i <= narr; i++) {
    if (h != NULL && (i = decode_run(d, h, i, narr)) > narr) break;
    decode_next(d);
    lua_rawseti(L, t, (lua_Integer)i);
    if (h != NULL && lt_asize(h) < narr)	/* Lua ran (a constructor given the */
      h = NULL;			/* table, a finalizer): it shrank the array part */
  }
  for (i = 0; i < nhash; i++) {
    decode_key(d);
    decode_next(d);
    lua_rawset(L, t);
  }
  if (hasmt) {
    decode_next(d);
    if (!lua_istable(L, -1)) bad(d, "metatable is not a table");
    lua_setmetatable(L, t);
  }
  dec_leave(d);
}


/* push the module of name index 'i' */
static void push_module (Decoder *d, uint64_t i) {
  if (!(d->flags & CODEC_TRUSTED)) refused(d, "module");
  if (i < 1 || i > (uint64_t)d->nnames) bad(d, "bad name index");
  lua_rawgeti(d->L, d->names, (lua_Integer)i);
}


/* module[field]: a C function or a table pinned by name (names.h) */
static void decode_field (Decoder *d) {
  lua_State *L = d->L;
  uint64_t i = varint(d);
  size_t len;
  const char *field;
  push_module(d, i);
  field = rawstring(d, &len);
  if (lua_istable(L, -1)) {
    lua_pushlstring(L, field, len);
    if (lua_rawget(L, -2) != LUA_TNIL) {
      lua_remove(L, -2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_rawgeti(L, d->names, d->nnames + (lua_Integer)i);	/* its name */
  lua_pushlstring(L, field, len);
  luaL_error(L, "isolate: cannot find '%s.%s' here", lua_tostring(L, -2),
             lua_tostring(L, -1));
}


/* join upvalue 'n' of the function at 'f' to one that an earlier closure has */
static void decode_upref (Decoder *d, int f, int n) {
  lua_State *L = d->L;
  lua_Debug ar;
  uint64_t id = varint(d), m = varint(d);
  if (id < 1 || id > (uint64_t)d->nextid) bad(d, "bad reference");
  lua_rawgeti(L, d->refs, (lua_Integer)id);
  if (!lua_isfunction(L, -1) || lua_iscfunction(L, -1)) bad(d, "bad upvalue reference");
  lua_pushvalue(L, -1);
  lua_getinfo(L, ">u", &ar);
  if (m < 1 || m > ar.nups) bad(d, "bad upvalue reference");
  lua_upvaluejoin(L, f, n, lua_gettop(L), (int)m);
  lua_pop(L, 1);
}


static void decode_function (Decoder *d) {
  lua_State *L = d->L;
  lua_Debug ar;
  uint64_t size, nups, i;
  const unsigned char *code;
  int f;
  size = varint(d);
  if (size > available(d)) bad(d, "truncated input");
  code = take(d, (size_t)size);
  dec_enter(d);
  switch (luaL_loadbufferx(L, (const char *)code, (size_t)size, "=isolate", "b")) {
    case LUA_OK: break;
    case LUA_ERRMEM: lua_error(L); break;	/* a memory error stays one */
    default: luaL_error(L, "isolate: cannot load function: %s", lua_tostring(L, -1));
  }
  f = lua_gettop(L);
  newref(d);
  nups = varint(d);
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  if (nups != ar.nups) bad(d, "upvalue count does not match the function");
  promise(d, nups, "truncated input");
  for (i = 1; i <= nups; i++) {
    int tag;
    d->promised--;
    tag = *take(d, 1);
    if (tag == T_UPREF)
      decode_upref(d, f, (int)i);
    else {
      decode(d, tag);
      lua_setupvalue(L, f, (int)i);
    }
  }
  dec_leave(d);
}


/*
** An object that travelled as its constructor and arguments (T_OBJECT):
** its id is taken first, as the encoder gave it, and holds the refs table
** itself (never a decoded value) until the constructor has returned, so
** that a reference to the object from its own arguments is malformed.
*/
static void decode_object (Decoder *d) {
  lua_State *L = d->L;
  uint64_t n, i;
  lua_Integer id;
  int status;
  Stack was;
  if (!(d->flags & CODEC_TRUSTED)) refused(d, "object with __isolate");
  n = varint(d);
  if (n < 1) bad(d, "object without a constructor");
  promise(d, n, "truncated input");
  dec_enter(d);
  if (n > INT_MAX - 8 || !lua_checkstack(L, (int)n + 8))
    luaL_error(L, "isolate: too many arguments to a constructor (%I)", (LUAI_UACINT)n);
  lua_pushnil(L);		/* makes refs if needed: newref */
  newref(d);
  lua_pop(L, 1);
  id = d->nextid;
  lua_pushvalue(L, d->refs);
  lua_rawseti(L, d->refs, id);
  for (i = 0; i < n; i++) decode_next(d);
  if (!lua_isfunction(L, -(int)n)) bad(d, "object constructor is not a function");
  if (nested >= ISOLATE_CODEC_NEST)
    luaL_error(L, "isolate: C stack overflow (transfers nested in constructors)");
  ranges(&was, 1, d->keys, d->value, lua_gettop(L) - (int)n, 1, 0);
  snapshot(L, &was);
  nested++;
  status = lua_pcall(L, (int)n - 1, 1, 0);
  nested--;
  if (!unchanged(L, &was)) {
    lua_pushliteral(L, "isolate: a constructor changed the values being made "
                       "(with the debug library)");
    lua_error(L);
  }
  if (status != LUA_OK) lua_error(L);	/* its error, as it is */
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, id);
  dec_leave(d);
}


static void decode (Decoder *d, int tag) {
  lua_State *L = d->L;
  const unsigned char *p;
  if (tag >= T_SMALLINT) {
    lua_pushinteger(L, tag - T_SMALLINT);
    return;
  }
  if (tag >= T_SHORTSTR) {
    size_t len = (size_t)(tag - T_SHORTSTR);
    if (len > SHORTSTR_MAX) bad(d, "unknown tag");
    p = take(d, len);
    lua_pushlstring(L, (const char *)p, len);
    return;
  }
  switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT8: case T_INT16: case T_INT32: case T_INT64:
      lua_pushinteger(L, integer_at(tag, take(d, (size_t)payload(tag))));
      break;
    case T_FLOAT: lua_pushnumber(L, float_at(take(d, 8))); break;
    case T_STRING: {
      size_t len;
      const char *s = rawstring(d, &len);
      pushstring(L, s, len);
      break;
    }
    case T_TABLE: case T_TABLEMT: case T_LENT: decode_table(d, tag); break;
    case T_REF: {
      uint64_t id = varint(d);
      if (id < 1 || id > (uint64_t)d->nextid) bad(d, "bad reference");
      lua_rawgeti(L, d->refs, (lua_Integer)id);
      if (lua_rawequal(L, -1, d->refs)) bad(d, "object refers to itself before it is made");
      break;
    }
    case T_FUNCTION:
      if (!(d->flags & CODEC_TRUSTED)) refused(d, "function");
      decode_function(d);
      break;
    case T_GLOBALS:
      if (!(d->flags & CODEC_TRUSTED)) refused(d, "globals table");
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      break;
    case T_MODULE: push_module(d, varint(d)); break;
    case T_FIELD: decode_field(d); break;
    case T_OBJECT: decode_object(d); break;
    case T_BORROWED: {		/* only in a message of this process */
      uint64_t len;
      if (!(d->flags & CODEC_BORROWED)) bad(d, "unknown tag");
      len = varint(d);
      pushstring(L, (const char *)(uintptr_t)get_le(take(d, 8), 8), (size_t)len);
      break;
    }
    case T_LIGHTUD:
      if (!(d->flags & CODEC_TRUSTED)) refused(d, "light userdata");
      lua_pushlightuserdata(L, (void *)(uintptr_t)get_le(take(d, 8), 8));
      break;
    default: bad(d, "unknown tag");
  }
}


/*
** The names section at 'offset' bytes from the message's start: each name
** becomes its module (package.loaded, or require), in d->names, before any
** value is read.  Returns the section's size.  Untrusted input has none.
*/
static size_t decode_names (Decoder *d, size_t start, uint64_t offset) {
  lua_State *L = d->L;
  Reader nr = *d->r;
  size_t from;
  uint64_t n, i;
  if (offset < d->r->pos - start || offset - (d->r->pos - start) > d->r->left ||
      !reader_skip(&nr, (size_t)(offset - (d->r->pos - start))))
    bad(d, "bad names offset");
  if (!(d->flags & CODEC_TRUSTED)) refused(d, "module");
  from = nr.pos;
  if (!get_varint(&nr, &n) || n == 0 || n > nr.left)
    bad(d, "bad names section");
  lua_createtable(L, (int)(2 * n), 0);	/* i -> module, n + i -> name */
  lua_replace(L, d->names);
  d->nnames = (lua_Integer)n;
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *name = codec_getstring(&nr, &len);
    if (name == NULL || len == 0 || memchr(name, 0, len) != NULL)
      bad(d, "bad module name");
    lua_pushlstring(L, name, len);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->names, (lua_Integer)(n + i));
    lua_rawseti(L, d->names, (lua_Integer)i);
  }
  for (i = 1; i <= n; i++) {	/* no byte of the input is read below */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_rawgeti(L, d->names, (lua_Integer)i);
    if (lua_rawget(L, -2) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_getglobal(L, "require");
      lua_rawgeti(L, d->names, (lua_Integer)i);
      lua_call(L, 1, 1);
    }
    lua_rawseti(L, d->names, (lua_Integer)i);
    lua_pop(L, 1);
  }
  return nr.pos - from;
}


/*
** Push the values of the message at 'r' and return how many.  A failure
** raises an error and leaves the stack as it was, less what unwinds.
*/
int codec_decode (lua_State *L, Reader *r, int flags) {
  return codec_decodeitems(L, r, flags, NULL, 0);
}


int codec_decodeitems (lua_State *L, Reader *r, int flags, lua_Integer *at,
                       lua_Integer base) {
  Decoder d;
  uint64_t n, offset;
  size_t start = r->pos, names = 0, i;
  int top = lua_gettop(L);
  const unsigned char *p;
  d.L = L;
  d.r = r;
  d.flags = flags;
  d.nextid = 0;
  d.nnames = 0;
  d.nkeys = 0;
  d.promised = 0;
  d.depth = 0;
  d.inplace = intable_usable(L);
  d.end = r->pos + r->left;
  p = reader_take(r, sizeof(magic));
  if (p == NULL || memcmp(p, magic, sizeof(magic) - 1) != 0)
    luaL_error(L, "isolate: cannot decode: not an isolate payload");
  if (p[sizeof(magic) - 1] != magic[sizeof(magic) - 1])
    luaL_error(L, "isolate: cannot decode: format version %d, expected %d",
               p[sizeof(magic) - 1], magic[sizeof(magic) - 1]);
  n = varint(&d);
  offset = get_le(take(&d, OFFSET_SIZE), OFFSET_SIZE);
  isolate_checkstack(L, 8);
  lua_pushnil(L);		/* 'refs', made when first needed */
  d.refs = top + 1;
  lua_pushnil(L);		/* 'names' */
  d.names = top + 2;
  lua_pushnil(L);		/* 'keys' */
  d.keys = top + 3;
  if (offset != 0) {
    names = decode_names(&d, start, offset);
    d.end = start + (size_t)offset;
  }
  promise(&d, n, "more values than input");
  if (n > LUAI_MAXSTACK / 2)
    luaL_error(L, "isolate: too many values to decode (%I)", (LUAI_UACINT)n);
  isolate_checkstack(L, (int)n + 8);
  for (i = 0; i < n; i++) {
    if (at != NULL) *at = base + (lua_Integer)i + 1;
    d.value = lua_gettop(L) + 1;
    decode_next(&d);
  }
  if (at != NULL) *at = 0;
  if (offset != 0 && (r->pos != d.end || !reader_skip(r, names)))
    bad(&d, "bad names offset");
  lua_rotate(L, top + 1, -3);	/* the three tables go */
  lua_pop(L, 3);
  return (int)n;
}

/* }====================================================== */
