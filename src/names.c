/*
** names.c: which values travel by name, and under which name (names.h).
**
** Tables: the map from a module table to its name is kept across encodes
** in the registry, with a copy of what package.loaded held when it was
** made (from a state's second map on: an isolate's state often encodes
** once).  The first table an encode meets checks that copy against
** package.loaded (one pass of lookups, no allocation); the map is made
** again only when a module came, went or changed, or package.path,
** package.cpath or package.preload did (they rank names).  Making it may ask
** whether a name can be loaded (a file on the paths), so it is worth
** keeping: a table known under two names (socket and socket.core) cost
** 30 us per encode before.  C functions: finding one means
** looking through every field of every loaded module, so the answers are
** kept across encodes in a weak-keyed table of the registry; an answer is
** checked before use (package.loaded[module][field] must still be that
** function), and a miss rebuilds the cache, at most once per encode.
**
** Everything here reads tables raw and runs no Lua code; whether a name
** can be loaded (a file on the package paths) is asked only to choose
** between two names of one value.
*/
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "names.h"


static const char cfuncs_key = 0;	/* registry: C function -> name */
static const char pins_key = 0;		/* registry: pinned table -> name */
static const char tables_key = 0;	/* registry: module table -> name */
static const char loaded_key = 0;	/* registry: name -> module table, as
					   package.loaded was for tables_key */


/*
** {======================================================
** Choosing between two names of one value
** =======================================================
*/

static int isstdlib (const char *mod) {
  static const char *const libs[] = {"_G", "coroutine", "debug", "io", "math",
    "os", "package", "string", "table", "utf8", NULL};
  int i;
  for (i = 0; libs[i] != NULL; i++)
    if (strcmp(mod, libs[i]) == 0) return 1;
  return 0;
}


/*
** Does a template of the path package[field] name a file that opens, with
** '?' replaced by 'mod' (dots made slashes)?  As package.searchpath does,
** but without calling it: whatever package.searchpath holds, no Lua code
** runs while names are found.
*/
static int searchable (lua_State *L, int pkg, const char *mod, const char *field) {
  const char *path, *t;
  int found = 0;
  lua_pushstring(L, field);
  lua_rawget(L, pkg);
  path = lua_tostring(L, -1);
  if (lua_type(L, -1) == LUA_TSTRING) {
    luaL_gsub(L, mod, ".", LUA_DIRSEP);		/* the name as a file name */
    for (t = path; !found && *t != '\0'; ) {
      const char *end = strchr(t, *LUA_PATH_SEP);
      size_t len = end != NULL ? (size_t)(end - t) : strlen(t);
      if (len > 0) {
        FILE *f;
        lua_pushlstring(L, t, len);
        luaL_gsub(L, lua_tostring(L, -1), LUA_PATH_MARK, lua_tostring(L, -2));
        if ((f = fopen(lua_tostring(L, -1), "r")) != NULL) {
          fclose(f);
          found = 1;
        }
        lua_pop(L, 2);
      }
      t += len + (end != NULL);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return found;
}


/* can 'mod' be required where package.preload and the paths are ours? */
static int loadable (lua_State *L, const char *mod) {
  int top = lua_gettop(L), ok = 0;
  isolate_checkstack(L, 8);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushliteral(L, "package");
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    int pkg = lua_gettop(L);
    lua_pushliteral(L, "preload");
    if (lua_rawget(L, pkg) == LUA_TTABLE &&
        (lua_pushstring(L, mod), lua_rawget(L, -2) != LUA_TNIL))
      ok = 1;
    else
      ok = searchable(L, pkg, mod, "path") || searchable(L, pkg, mod, "cpath");
  }
  lua_settop(L, top);
  return ok;
}


/* 0 for a standard library, 1 for a name that can be loaded, 2 otherwise */
static int rank (lua_State *L, const char *mod) {
  return isstdlib(mod) ? 0 : loadable(L, mod) ? 1 : 2;
}


/*
** Is name 'a' better than name 'b' ("module" or "module\0field")?  The
** rank of the module first, then the shorter, then the first in byte
** order.  The ranks are asked only when they can decide.
*/
static int better (lua_State *L, const char *a, size_t alen,
                   const char *b, size_t blen) {
  int sa = isstdlib(a), sb = isstdlib(b);
  if (sa != sb) return sa;
  if (!sa && strcmp(a, b) != 0) {
    int ra = rank(L, a), rb = rank(L, b);
    if (ra != rb) return ra < rb;
  }
  if (alen != blen) return alen < blen;
  return memcmp(a, b, alen) < 0;
}


/*
** t[value] = name if t has no name for it yet or 'name' is better.  The
** value is at -2, the name on top; both are popped.
*/
static void offer (lua_State *L, int t) {
  size_t len, oldlen;
  const char *name = lua_tolstring(L, -1, &len), *old;
  lua_pushvalue(L, -2);
  lua_rawget(L, t);
  old = lua_tolstring(L, -1, &oldlen);
  lua_pop(L, 1);
  if (old == NULL || better(L, name, len, old, oldlen))
    lua_rawset(L, t);
  else
    lua_pop(L, 2);
}

/* }====================================================== */


/* a string key without zeros (a name travels as "module\0field") */
static int plainname (lua_State *L, int idx) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &len);
  return len > 0 && memchr(s, 0, len) == NULL;
}


void names_open (lua_State *L, Names *n) {
  isolate_checkstack(L, 4);
  lua_pushnil(L);
  n->tables = lua_gettop(L);
  lua_pushnil(L);
  n->cfuncs = lua_gettop(L);
  n->scanned = 0;
}


static int ismodule (lua_State *L) {	/* name at -2, value at -1 */
  return plainname(L, -2) && lua_type(L, -1) == LUA_TTABLE;
}


/*
** What decides a map besides package.loaded, pushed: package.path,
** package.cpath and package.preload (the ranks of two names of a table).
** (A file that appears on the paths later is seen when one of these, or
** package.loaded, changes next.)
*/
#define NDEPS	3

static void pushdeps (lua_State *L) {
  static const char *const deps[NDEPS] = {"path", "cpath", "preload"};
  int i, pkg;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushliteral(L, "package");
  lua_rawget(L, -2);
  lua_remove(L, -2);
  pkg = lua_gettop(L);
  for (i = 0; i < NDEPS; i++) {
    if (lua_istable(L, pkg)) {
      lua_pushstring(L, deps[i]);
      lua_rawget(L, pkg);
    }
    else lua_pushnil(L);
  }
  lua_remove(L, pkg);
}


/*
** Does the copy at 'copy' still tell what package.loaded holds?  It has
** the module tables by name (weak values: a module that was collected
** is gone from package.loaded too), their count at [true], and the
** values of pushdeps at [1..NDEPS].  A copy without a count is none.
*/
static int unchanged (lua_State *L, int copy) {
  lua_Integer n = 0;
  int same = 1, i;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (same && lua_next(L, -2)) {	/* name at -2, module at -1 */
    if (ismodule(L)) {
      n++;
      lua_pushvalue(L, -2);
      lua_rawget(L, copy);
      same = lua_rawequal(L, -1, -2);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (!same) lua_pop(L, 1);		/* the key lua_next left */
  lua_pushboolean(L, 1);
  lua_rawget(L, copy);
  same = same && lua_isinteger(L, -1) && lua_tointeger(L, -1) == n;
  lua_pop(L, 2);
  pushdeps(L);
  for (i = 1; i <= NDEPS; i++) {
    lua_rawgeti(L, copy, i);
    same = same && lua_rawequal(L, -1, -1 - (NDEPS - i + 1));
    lua_pop(L, 1);
  }
  lua_pop(L, NDEPS);
  return same;
}


/* a new weak table, pushed */
static void weaktable (lua_State *L, const char *mode) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}


/*
** The map from module tables (and pinned tables) to their names, into
** n->tables: the registry's, or a new one when package.loaded changed.
** A new map and its copy go to the registry once both are whole (a
** memory error on the way leaves the old ones, which do not validate).
*/
static void find_tables (lua_State *L, Names *n) {
  lua_Integer count = 0;
  int top = lua_gettop(L), copy, keep, i;
  isolate_checkstack(L, 12);
  switch (lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key)) {
    case LUA_TTABLE:
      if (unchanged(L, top + 1) &&
          lua_rawgetp(L, LUA_REGISTRYINDEX, &tables_key) == LUA_TTABLE) {
        lua_replace(L, n->tables);
        lua_settop(L, top);
        return;
      }
      /* FALLTHROUGH */
    case LUA_TBOOLEAN:		/* a second map: keep it */
      keep = 1;
      break;
    default:			/* the first map (of an isolate's state, often
				   the only one): made for this encode alone */
      keep = 0;
  }
  lua_settop(L, top);
  if (keep) weaktable(L, "v");
  else lua_pushnil(L);
  copy = top + 1;
  if (keep) weaktable(L, "k");
  else lua_newtable(L);
  lua_replace(L, n->tables);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {	/* name at -2, module at -1 */
    if (ismodule(L)) {
      count++;
      if (keep) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, copy);
      }
      lua_pushvalue(L, -2);
      offer(L, n->tables);
    }
    else lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pins_key) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {	/* table at -2, name at -1 */
      lua_pushvalue(L, -2);
      if (lua_rawget(L, n->tables) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, n->tables);
      }
      else lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
  if (keep) {
    pushdeps(L);
    for (i = NDEPS; i >= 1; i--) lua_rawseti(L, copy, i);
    lua_pushboolean(L, 1);
    lua_pushinteger(L, count);
    lua_rawset(L, copy);
    lua_pushvalue(L, n->tables);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &tables_key);
    lua_pushvalue(L, copy);
  }
  else lua_pushboolean(L, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_key);
  lua_settop(L, top);
}


/* a fresh cache of the names of every C function of a loaded module */
static void scan_cfuncs (lua_State *L, Names *n) {
  isolate_checkstack(L, 12);
  weaktable(L, "k");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &cfuncs_key);
  lua_replace(L, n->cfuncs);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {		/* module name at -2, module at -1 */
    if (ismodule(L)) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {		/* field at -2, value at -1 */
        if (plainname(L, -2) && lua_iscfunction(L, -1)) {
          lua_pushvalue(L, -1);
          lua_pushvalue(L, -5);		/* module name */
          lua_pushlstring(L, "", 1);
          lua_pushvalue(L, -5);		/* field */
          lua_concat(L, 3);
          offer(L, n->cfuncs);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}


/* is the name on top ("module\0field") still that of the value at 'idx'? */
static int holds (lua_State *L, int idx) {
  size_t len;
  const char *name = lua_tolstring(L, -1, &len);
  int top = lua_gettop(L), ok = 0;
  size_t modlen = strlen(name);
  if (modlen < len) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushlstring(L, name, modlen);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_pushlstring(L, name + modlen + 1, len - modlen - 1);
      lua_rawget(L, -2);
      ok = lua_rawequal(L, -1, idx);
    }
  }
  lua_settop(L, top);
  return ok;
}


void names_reset (lua_State *L, Names *n) {
  lua_pushnil(L);
  lua_replace(L, n->tables);
  lua_pushnil(L);
  lua_replace(L, n->cfuncs);
  n->scanned = 0;
}


const char *names_find (lua_State *L, Names *n, int idx, size_t *len) {
  if (lua_type(L, idx) == LUA_TTABLE) {
    if (lua_isnil(L, n->tables)) find_tables(L, n);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, n->tables) == LUA_TSTRING)
      return lua_tolstring(L, -1, len);
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_iscfunction(L, idx)) return NULL;
  if (lua_isnil(L, n->cfuncs)) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &cfuncs_key);
    lua_replace(L, n->cfuncs);
  }
  for (;;) {
    if (lua_istable(L, n->cfuncs)) {
      lua_pushvalue(L, idx);
      if (lua_rawget(L, n->cfuncs) == LUA_TSTRING && holds(L, idx))
        return lua_tolstring(L, -1, len);
      lua_pop(L, 1);
    }
    if (n->scanned) return NULL;
    scan_cfuncs(L, n);
    n->scanned = 1;
  }
}


void names_pin (lua_State *L, int idx, const char *module, const char *field) {
  idx = lua_absindex(L, idx);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pins_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pins_key);
  }
  lua_pushvalue(L, idx);
  lua_pushstring(L, module);
  lua_pushlstring(L, "", 1);
  lua_pushstring(L, field);
  lua_concat(L, 3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key) == LUA_TTABLE) {
    lua_pushboolean(L, 0);		/* the next encode makes the map again */
    lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_key);
  }
  lua_pop(L, 1);
}
