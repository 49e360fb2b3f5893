/*
** codec.c: encode Lua values into a Buffer, decode them into a state.
**
** One tag byte per value, with small integers and short strings inline in
** the tag.  A table is its array part (1..#t) then its other pairs, then
** its metatable; a function is its bytecode (with debug information, so
** remote tracebacks have lines), then its upvalues.  Tables and functions
** get ids in the order they are first met, on both sides, so a second
** reference is a T_REF and cycles close.  Upvalues shared by two closures
** are a T_UPREF to the first closure that holds them, joined on decoding.
**
** The encoder runs in the sending state and raises a Lua error, naming the
** path to the value, for what cannot travel; the buffer it was writing
** belongs to its caller, who frees it.  The decoder checks every tag,
** length and id and raises a clear error on malformed input; it accepts
** bytecode only when asked (CODEC_FUNCTIONS), as bytecode can crash a VM.
*/
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "codec.h"


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
  T_MODULE,		/* string name: the destination's require(name) */
  T_CFUNCTION,		/* string module, string field */
  T_LIGHTUD,		/* 8 bytes: the pointer */
  T_SHORTSTR = 0x20,	/* 0x20-0x3f: a string of (tag - 0x20) bytes */
  T_SMALLINT = 0x80	/* 0x80-0xff: the integer (tag - 0x80) */
};

#define SHORTSTR_MAX	31

static const unsigned char magic[5] = {0x1b, 'I', 'S', 'O', 1};


/*
** {======================================================
** Writing (plain C: no Lua state needed, 0 when memory runs out)
** =======================================================
*/

static void put_le (unsigned char *p, uint64_t v, int n) {
  int i;
  for (i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static int w_bytes (Buffer *b, const void *s, size_t n) {
  unsigned char *p = buffer_reserve(b, n);
  if (p == NULL) return 0;
  if (n > 0) memcpy(p, s, n);
  return 1;
}

/* an optional tag byte (tag < 0: none), then 'v' as an unsigned LEB128 */
static int w_tagvarint (Buffer *b, int tag, uint64_t v) {
  unsigned char tmp[11];
  size_t n = 0;
  if (tag >= 0) tmp[n++] = (unsigned char)tag;
  while (v >= 0x80) {
    tmp[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  tmp[n++] = (unsigned char)v;
  return w_bytes(b, tmp, n);
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

static int w_header (Buffer *b, uint64_t count) {
  return w_bytes(b, magic, sizeof(magic)) && w_tagvarint(b, -1, count);
}


int codec_putstring (Buffer *b, const char *s, size_t len) {
  return w_tagvarint(b, -1, len) && w_bytes(b, s, len);
}


int codec_failure (Buffer *b, const char *kind, const char *message) {
  unsigned char nils[2] = {T_NIL, T_NIL};	/* no traceback, no value */
  return w_header(b, 4) && w_string(b, kind, strlen(kind)) &&
         w_string(b, message, strlen(message)) && w_bytes(b, nils, 2);
}

/* }====================================================== */


/*
** {======================================================
** Encoding
** =======================================================
*/

/* one step of the path to the value being encoded, for error messages */
typedef struct Step {
  enum { S_ARG, S_RESULT, S_VALUE, S_UPVALUE, S_FIELD, S_INDEX, S_KEYOF,
         S_KEY, S_METATABLE } kind;
  int idx;			/* stack index: S_UPVALUE's function, S_KEYOF's key */
  lua_Integer n;		/* S_ARG, S_RESULT, S_VALUE, S_INDEX */
  const char *name;		/* S_UPVALUE, S_FIELD: a string on the stack */
} Step;

typedef struct Encoder {
  lua_State *L;
  Buffer *b;
  Role role;
  int globals;			/* stack index of the globals table */
  int seen;			/* table or function -> id (made when first needed) */
  int upvals;			/* upvalue id -> function id * 256 + (n - 1) */
  int modules;			/* table in package.loaded -> its name */
  int cfuncs;			/* C function of a loaded module -> "mod\0field" */
  int scanned;			/* the modules were looked through for 'cfuncs' */
  lua_Integer nextid;
  int depth;
  Step path[ISOLATE_MAXDEPTH];
} Encoder;


static void render_step (lua_State *L, const Step *s) {
  lua_Debug ar;
  switch (s->kind) {
    case S_ARG: lua_pushfstring(L, "argument #%I", (LUAI_UACINT)s->n); break;
    case S_RESULT: lua_pushfstring(L, "result #%I", (LUAI_UACINT)s->n); break;
    case S_VALUE: lua_pushfstring(L, "value #%I", (LUAI_UACINT)s->n); break;
    case S_UPVALUE:
      lua_pushvalue(L, s->idx);
      lua_getinfo(L, ">S", &ar);
      lua_pushfstring(L, "upvalue '%s' of function <%s:%d>", s->name,
                      ar.short_src, ar.linedefined);
      break;
    case S_FIELD: lua_pushfstring(L, "field '%s'", s->name); break;
    case S_INDEX: lua_pushfstring(L, "[%I]", (LUAI_UACINT)s->n); break;
    case S_KEYOF:
      if (lua_type(L, s->idx) == LUA_TNUMBER || lua_type(L, s->idx) == LUA_TBOOLEAN)
        lua_pushfstring(L, "[%s]", luaL_tolstring(L, s->idx, NULL));
      else
        lua_pushfstring(L, "[%s key]", luaL_typename(L, s->idx));
      break;
    case S_KEY: lua_pushliteral(L, "key"); break;
    case S_METATABLE: lua_pushliteral(L, "metatable"); break;
  }
}


/*
** Raise "isolate: <what> (<path>)".  For a call, the function itself is
** argument #1; what it captures reads better without that prefix:
** "upvalue 'f' of function <main.lua:12>".
*/
static int fail (Encoder *e, const char *what) {
  lua_State *L = e->L;
  int i = (e->role == ROLE_CALL && e->depth > 1 && e->path[0].n == 1);
  int n = 1;
  luaL_checkstack(L, 2 * e->depth + 8, "isolate: path too long to report");
  lua_pushfstring(L, "isolate: %s", what);
  if (e->depth == 0) return lua_error(L);
  lua_pushliteral(L, " (");
  n++;
  for (; i < e->depth; i++) {
    int top = lua_gettop(L);
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

static int nomem (Encoder *e) {
  return fail(e, "not enough memory to encode");
}


static void step (Encoder *e, int kind, int idx, lua_Integer n,
                  const char *name) {
  Step *s;
  if (e->depth >= ISOLATE_MAXDEPTH)
    fail(e, "value nested too deeply");
  s = &e->path[e->depth++];
  s->kind = kind;
  s->idx = idx;
  s->n = n;
  s->name = name;
}

#define unstep(e)	((e)->depth--)


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


static void put_integer (Encoder *e, lua_Integer v) {
  unsigned char *p;
  int tag, size;
  if (0 <= v && v < 0x80) {
    put1(e, T_SMALLINT + v);
    return;
  }
  if (v >= INT8_MIN && v <= INT8_MAX) tag = T_INT8, size = 1;
  else if (v >= INT16_MIN && v <= INT16_MAX) tag = T_INT16, size = 2;
  else if (v >= INT32_MIN && v <= INT32_MAX) tag = T_INT32, size = 4;
  else tag = T_INT64, size = 8;
  p = reserve(e, 1 + size);
  p[0] = (unsigned char)tag;
  put_le(p + 1, (uint64_t)v, size);
}


static void put_float (Encoder *e, lua_Number x) {
  double d = (double)x;
  uint64_t bits;
  unsigned char *p = reserve(e, 9);
  memcpy(&bits, &d, sizeof(bits));
  p[0] = T_FLOAT;
  put_le(p + 1, bits, 8);
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


/* make the lookup table in stack slot '*slot' if it is not there yet */
static int lazytable (Encoder *e, int *slot) {
  if (lua_isnil(e->L, *slot)) {
    lua_newtable(e->L);
    lua_replace(e->L, *slot);
    return 1;
  }
  return 0;
}


/*
** Module tables travel by name: a table that is package.loaded[name]
** becomes require(name) at the destination.  The map from table to name
** is made once per encode, when a table is first met: one pass over
** package.loaded, which can change between encodes.
*/
static const char *modname (Encoder *e, int idx, size_t *len) {
  lua_State *L = e->L;
  if (lazytable(e, &e->modules)) {
    luaL_checkstack(L, 8, NULL);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    while (lua_next(L, -2)) {	/* name at -2, module at -1 */
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
        lua_pushvalue(L, -1);
        if (lua_rawget(L, e->modules) == LUA_TNIL) {	/* first name wins */
          lua_pushvalue(L, -2);
          lua_pushvalue(L, -4);
          lua_rawset(L, e->modules);
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->modules);
  return lua_tolstring(L, -1, len);	/* NULL for nil; the map holds it */
}


/*
** C functions travel by name too: "module\0field" for a function found in
** a table of package.loaded.  Finding one means looking through every
** field of every loaded module, so the answers are kept across encodes in
** a weak-keyed table of the registry; an answer is checked before use
** (package.loaded[module][field] must still be that function), and a miss
** looks through the modules again, at most once per encode.
*/
static const char cfuncs_key = 0;

static void scan_cfuncs (Encoder *e) {
  lua_State *L = e->L;
  luaL_checkstack(L, 8, NULL);
  lua_newtable(L);			/* a fresh cache */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &cfuncs_key);
  lua_replace(L, e->cfuncs);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {		/* module name at -2, module at -1 */
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {		/* field at -2, value at -1 */
        if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
          lua_pushvalue(L, -1);
          if (lua_rawget(L, e->cfuncs) == LUA_TNIL) {	/* first name wins */
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -6);	/* module name */
            lua_pushlstring(L, "", 1);
            lua_pushvalue(L, -6);	/* field */
            lua_concat(L, 3);
            lua_rawset(L, e->cfuncs);
          }
          lua_pop(L, 1);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* is the name on top of the stack ("module\0field") still that of 'f'? */
static int cfunc_holds (lua_State *L, int f) {
  const char *name = lua_tostring(L, -1);
  int top = lua_gettop(L), ok = 0;
  if (name != NULL) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, name) == LUA_TTABLE) {
      lua_pushstring(L, name + strlen(name) + 1);
      lua_rawget(L, -2);
      ok = lua_rawequal(L, -1, f);
    }
  }
  lua_settop(L, top);
  return ok;
}

/* "module\0field" of the C function at 'f' (left on the stack), or NULL */
static const char *cfuncname (Encoder *e, int f, size_t *len) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->cfuncs)) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &cfuncs_key);
    lua_replace(L, e->cfuncs);
  }
  for (;;) {
    if (lua_istable(L, e->cfuncs)) {
      lua_pushvalue(L, f);
      lua_rawget(L, e->cfuncs);
      if (cfunc_holds(L, f)) return lua_tolstring(L, -1, len);
      lua_pop(L, 1);
    }
    if (e->scanned) return NULL;
    scan_cfuncs(e);
    e->scanned = 1;
  }
}


/* emit a T_REF and return 1 if the table or function was met before */
static int seen_before (Encoder *e, int idx) {
  lua_State *L = e->L;
  if (!lazytable(e, &e->seen)) {
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
      put_varint(e, T_REF, (uint64_t)lua_tointeger(L, -1));
      lua_pop(L, 1);
      return 1;
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  lua_pushinteger(L, ++e->nextid);
  lua_rawset(L, e->seen);
  return 0;
}


static void encode (Encoder *e, int idx);


/*
** One traversal: lua_next gives the array part first, in order, so the
** run of keys 1, 2, 3... that it starts with is sent as the array part;
** what follows is sent as key/value pairs.  Both counts are patched in
** after the traversal (chunks do not move).
*/
static void encode_table (Encoder *e, int t) {
  lua_State *L = e->L;
  lua_Integer narr = 0;
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
  if ((name = modname(e, t, &len)) != NULL) {
    put1(e, T_MODULE);
    put_string(e, name, len);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  if (seen_before(e, t)) return;
  luaL_checkstack(L, 8, "isolate: value nested too deeply");
  hasmt = lua_getmetatable(L, t);
  top = lua_gettop(L);		/* the metatable, if any */
  counts = reserve(e, 9);	/* tag, narr, nhash */
  counts[0] = hasmt ? T_TABLEMT : T_TABLE;
  step(e, S_INDEX, 0, 0, NULL);
  s = &e->path[e->depth - 1];
  lua_pushnil(L);
  while (lua_next(L, t)) {	/* key at top + 1, value at top + 2 */
    int kind = S_KEYOF;
    if (lua_isinteger(L, top + 1)) {
      lua_Integer k = lua_tointeger(L, top + 1);
      if (nhash == 0 && k == narr + 1 && narr < UINT32_MAX) {
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
    encode(e, top + 1);
    s->kind = kind;
    if (kind == S_FIELD) s->name = lua_tostring(L, top + 1);
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
    const char *name = cfuncname(e, f, &len);
    if (name == NULL) cannot(e, f);
    put1(e, T_CFUNCTION);
    put_string(e, name, strlen(name));
    put_string(e, name + strlen(name) + 1, len - strlen(name) - 1);
    lua_pop(L, 1);
    return;
  }
  if (seen_before(e, f)) return;
  id = e->nextid;
  luaL_checkstack(L, 8, "isolate: value nested too deeply");
  lua_pushvalue(L, f);
  lua_dump(L, count_writer, &size, 0);
  put_varint(e, T_FUNCTION, size);
  dst = reserve(e, size);
  lua_dump(L, copy_writer, &dst, 0);
  lua_getinfo(L, ">u", &ar);	/* pops the function */
  put_varint(e, -1, ar.nups);
  lazytable(e, &e->upvals);
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
      put_string(e, s, len);
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
    default: cannot(e, idx);	/* a coroutine or a full userdata */
  }
}


/*
** Append one message holding the 'n' values from stack index 'first'.
** On error (what cannot travel, memory) the buffer holds part of it: its
** owner frees or resets it.  The stack is as it was on return.
*/
void codec_encode (lua_State *L, Buffer *b, int first, int n, Role role) {
  static const int stepkind[] = {S_ARG, S_RESULT, S_VALUE};
  Encoder e;
  int top = lua_gettop(L), i;
  e.L = L;
  e.b = b;
  e.role = role;
  e.nextid = 0;
  e.depth = 0;
  e.scanned = 0;
  luaL_checkstack(L, 8, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = top + 1;
  lua_settop(L, top + 5);	/* four lookup tables, made when first needed */
  e.seen = top + 2;
  e.upvals = top + 3;
  e.modules = top + 4;
  e.cfuncs = top + 5;
  if (!w_header(b, (uint64_t)n)) nomem(&e);
  for (i = 0; i < n; i++) {
    step(&e, stepkind[role], 0, i + 1, NULL);
    encode(&e, first + i);
    unstep(&e);
  }
  lua_settop(L, top);
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
  lua_Integer nextid;
  int depth;
} Decoder;


static int bad (Decoder *d, const char *why) {
  return luaL_error(d->L, "isolate: cannot decode: %s (at byte %I)", why,
                    (LUAI_UACINT)d->r->pos);
}

static inline const unsigned char *take (Decoder *d, size_t n) {
  const unsigned char *p = reader_take(d->r, n);
  if (p == NULL) bad(d, "truncated input");
  return p;
}

static uint64_t get_le (const unsigned char *p, int n) {
  uint64_t v = 0;
  int i;
  for (i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
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
  uint64_t v;
  if (!get_varint(d->r, &v)) bad(d, "truncated or overlong length");
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


static void enter (Decoder *d) {
  if (++d->depth > ISOLATE_MAXDEPTH) bad(d, "value nested too deeply");
  luaL_checkstack(d->L, 8, "isolate: value nested too deeply");
}

static void newref (Decoder *d) {
  if (lua_isnil(d->L, d->refs)) {
    lua_newtable(d->L);
    lua_replace(d->L, d->refs);
  }
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->refs, ++d->nextid);
}


static void decode (Decoder *d, int tag);

static inline void decode_next (Decoder *d) {
  decode(d, *take(d, 1));
}


/* a string value, left on the stack, as a C string without embedded zeros */
static const char *decode_name (Decoder *d) {
  size_t len;
  const char *s;
  decode_next(d);
  if (lua_type(d->L, -1) != LUA_TSTRING) bad(d, "name expected");
  s = lua_tolstring(d->L, -1, &len);
  if (strlen(s) != len) bad(d, "name expected");
  return s;
}


static void decode_table (Decoder *d, int hasmt) {
  lua_State *L = d->L;
  const unsigned char *counts = take(d, 8);
  uint64_t narr = get_le(counts, 4), nhash = get_le(counts + 4, 4), i;
  int t;
  if (narr > d->r->left || nhash > d->r->left / 2)
    bad(d, "table larger than its input");
  enter(d);
  lua_createtable(L, narr > INT_MAX ? INT_MAX : (int)narr,
                  nhash > INT_MAX ? INT_MAX : (int)nhash);
  t = lua_gettop(L);
  newref(d);
  for (i = 1; i <= narr; i++) {
    decode_next(d);
    lua_rawseti(L, t, (lua_Integer)i);
  }
  for (i = 0; i < nhash; i++) {
    decode_next(d);
    if (lua_isnil(L, -1) ||
        (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1)))
      bad(d, "table key is nil or NaN");
    decode_next(d);
    lua_rawset(L, t);
  }
  if (hasmt) {
    decode_next(d);
    if (!lua_istable(L, -1)) bad(d, "metatable is not a table");
    lua_setmetatable(L, t);
  }
  d->depth--;
}


/* the module 'name' from package.loaded, or (trusted input) require(name) */
static void push_module (Decoder *d, const char *name) {
  lua_State *L = d->L;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, name) == LUA_TNIL) {
    if (!(d->flags & CODEC_FUNCTIONS))
      luaL_error(L, "isolate: cannot decode: module '%s' is not loaded", name);
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    lua_replace(L, -2);
  }
  lua_remove(L, -2);
}


static void decode_cfunction (Decoder *d) {
  lua_State *L = d->L;
  const char *mod = decode_name(d);
  const char *field = decode_name(d);
  push_module(d, mod);
  if (lua_type(L, -1) != LUA_TTABLE ||
      lua_getfield(L, -1, field) != LUA_TFUNCTION || !lua_iscfunction(L, -1))
    luaL_error(L, "isolate: cannot find C function '%s.%s' here", mod, field);
  lua_replace(L, -4);
  lua_pop(L, 2);
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
  if (!(d->flags & CODEC_FUNCTIONS))
    bad(d, "function refused (decode trusted input with functions = true)");
  size = varint(d);
  if (size > d->r->left) bad(d, "truncated input");
  code = take(d, (size_t)size);
  enter(d);
  if (luaL_loadbufferx(L, (const char *)code, (size_t)size, "=isolate", "b") != LUA_OK)
    luaL_error(L, "isolate: cannot load function: %s", lua_tostring(L, -1));
  f = lua_gettop(L);
  newref(d);
  nups = varint(d);
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  if (nups != ar.nups) bad(d, "upvalue count does not match the function");
  for (i = 1; i <= nups; i++) {
    int tag = *take(d, 1);
    if (tag == T_UPREF)
      decode_upref(d, f, (int)i);
    else {
      decode(d, tag);
      lua_setupvalue(L, f, (int)i);
    }
  }
  d->depth--;
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
    case T_INT8: lua_pushinteger(L, (int8_t)*take(d, 1)); break;
    case T_INT16: lua_pushinteger(L, (int16_t)get_le(take(d, 2), 2)); break;
    case T_INT32: lua_pushinteger(L, (int32_t)get_le(take(d, 4), 4)); break;
    case T_INT64: lua_pushinteger(L, (lua_Integer)get_le(take(d, 8), 8)); break;
    case T_FLOAT: {
      uint64_t bits = get_le(take(d, 8), 8);
      double x;
      memcpy(&x, &bits, sizeof(x));
      lua_pushnumber(L, (lua_Number)x);
      break;
    }
    case T_STRING: {
      uint64_t len = varint(d);
      if (len > d->r->left) bad(d, "truncated input");
      p = take(d, (size_t)len);
      lua_pushlstring(L, (const char *)p, (size_t)len);
      break;
    }
    case T_TABLE: case T_TABLEMT: decode_table(d, tag == T_TABLEMT); break;
    case T_REF: {
      uint64_t id = varint(d);
      if (id < 1 || id > (uint64_t)d->nextid) bad(d, "bad reference");
      lua_rawgeti(L, d->refs, (lua_Integer)id);
      break;
    }
    case T_FUNCTION: decode_function(d); break;
    case T_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); break;
    case T_MODULE: {
      const char *name = decode_name(d);
      push_module(d, name);
      lua_remove(L, -2);
      break;
    }
    case T_CFUNCTION:
      if (!(d->flags & CODEC_FUNCTIONS))
        bad(d, "function refused (decode trusted input with functions = true)");
      decode_cfunction(d);
      break;
    case T_LIGHTUD:
      lua_pushlightuserdata(L, (void *)(uintptr_t)get_le(take(d, 8), 8));
      break;
    default: bad(d, "unknown tag");
  }
}


/*
** Push the values of the message at 'r' and return how many.  A failure
** raises an error and leaves the stack as it was, less what unwinds.
*/
int codec_decode (lua_State *L, Reader *r, int flags) {
  Decoder d;
  uint64_t n, i;
  int top = lua_gettop(L);
  const unsigned char *p;
  d.L = L;
  d.r = r;
  d.flags = flags;
  d.nextid = 0;
  d.depth = 0;
  p = reader_take(r, sizeof(magic));
  if (p == NULL || memcmp(p, magic, sizeof(magic) - 1) != 0)
    luaL_error(L, "isolate: cannot decode: not an isolate payload");
  if (p[sizeof(magic) - 1] != magic[sizeof(magic) - 1])
    luaL_error(L, "isolate: cannot decode: format version %d, expected %d",
               p[sizeof(magic) - 1], magic[sizeof(magic) - 1]);
  n = varint(&d);
  if (n > r->left) bad(&d, "more values than input");
  if (n > INT_MAX - 8 || !lua_checkstack(L, (int)n + 8))
    luaL_error(L, "isolate: too many values to decode (%I)", (LUAI_UACINT)n);
  lua_pushnil(L);		/* 'refs', made when first needed */
  d.refs = top + 1;
  for (i = 0; i < n; i++) decode_next(&d);
  lua_remove(L, d.refs);
  return (int)n;
}

/* }====================================================== */
