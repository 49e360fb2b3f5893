/*
** message.c: a job's input and an isolate's failure record (message.h).
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "codec.h"
#include "message.h"


/*
** {======================================================
** The input of a job
** =======================================================
*/

/* package[field] of the calling state, as a raw string ("" if none) */
static void putpath (lua_State *L, Buffer *b, const char *field) {
  int top = lua_gettop(L);
  size_t len = 0;
  const char *s = "";
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushliteral(L, "package");
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_pushstring(L, field);
    if (lua_rawget(L, -2) == LUA_TSTRING) s = lua_tolstring(L, -1, &len);
  }
  if (!codec_putstring(b, s, len)) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
  lua_settop(L, top);
}


static void nomemory (lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  lua_error(L);
}


/* the index of a map chunk's first item (0: not a map), 8 bytes LE */
static void putindex (lua_State *L, Buffer *b, lua_Integer index) {
  unsigned char le[8];
  int i;
  for (i = 0; i < 8; i++) le[i] = (unsigned char)((lua_Unsigned)index >> (8 * i));
  if (!codec_putstring(b, (const char *)le, 8)) nomemory(L);
}


void message_putinput (lua_State *L, Buffer *b, int first, int n, int borrow) {
  putpath(L, b, "path");
  putpath(L, b, "cpath");
  putindex(L, b, 0);
  if (borrow) codec_encodeborrowing(L, b, first, n, ROLE_CALL);
  else codec_encode(L, b, first, n, ROLE_CALL);
}


void message_putchunk (lua_State *L, Buffer *b, const Buffer *fn,
                       int first, int n, lua_Integer index) {
  putpath(L, b, "path");
  putpath(L, b, "cpath");
  putindex(L, b, index);
  if (!buffer_copy(b, fn)) nomemory(L);
  codec_encodelist(L, b, first, n, ROLE_ITEM, index - 1, NULL);
}


/* set package[field] (package at -1) from the next raw string of 'r' */
static void setpath (lua_State *L, Reader *r, const char *field) {
  size_t len;
  const char *s = codec_getstring(r, &len);
  if (s == NULL) luaL_error(L, "isolate: corrupt job input");
  lua_pushlstring(L, s, len);
  lua_setfield(L, -2, field);
}


int message_getinput (lua_State *L, Reader *r, lua_Integer *index, lua_Integer *at) {
  int base, n, i;
  size_t len;
  const unsigned char *le;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "package");
  setpath(L, r, "path");
  setpath(L, r, "cpath");
  lua_pop(L, 2);
  le = (const unsigned char *)codec_getstring(r, &len);
  if (le == NULL || len != 8) luaL_error(L, "isolate: corrupt job input");
  for (*index = 0, i = 7; i >= 0; i--)
    *index = (lua_Integer)(((lua_Unsigned)*index << 8) | le[i]);
  base = lua_gettop(L) + 1;
  n = codec_decode(L, r, CODEC_TRUSTED | CODEC_BORROWED);
  if (*index != 0) {		/* a map chunk: the function, then the items */
    if (n != 1) luaL_error(L, "isolate: corrupt job input");
    n += codec_decodeitems(L, r, CODEC_TRUSTED, at, *index - 1);
  }
  if (n < 1 || !lua_isfunction(L, base)) luaL_error(L, "isolate: corrupt job input");
  return n;
}

/* }====================================================== */


/*
** {======================================================
** The failure record
** =======================================================
*/

static int tostring_value (lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}


/* is the value at 'idx' a RemoteError with a message? (pushed if so) */
static int remotemessage (lua_State *L, int idx) {
  int is;
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ISOLATE_REMOTEERROR);
  is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!is) return 0;
  lua_pushliteral(L, "message");
  if (lua_rawget(L, idx) == LUA_TSTRING) return 1;
  lua_pop(L, 1);
  return 0;
}


/*
** The text of the error value at 'value'; a failing __tostring is no
** error.  A RemoteError (an isolate's own run failed) gives its message
** alone: its remote traceback stays in the value.
*/
static void pushtext (lua_State *L, int value) {
  int t = lua_type(L, value);
  if (t == LUA_TTABLE && remotemessage(L, value)) return;
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    lua_pushvalue(L, value);
    lua_tostring(L, -1);
  }
  else if (luaL_getmetafield(L, value, "__tostring") != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushcfunction(L, tostring_value);
    lua_pushvalue(L, value);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(error object is a %s value whose __tostring failed)",
                      luaL_typename(L, value));
    }
  }
  else
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, value));
}


static int encode_value (lua_State *L) {
  codec_encode(L, (Buffer *)lua_touserdata(L, 1), 2, 1, ROLE_RESULT);
  return 0;
}


void message_putfailure (lua_State *L, Buffer *b, const char *kind,
                         const char *message, int value, int traceback,
                         lua_Integer index) {
  int top = lua_gettop(L);
  isolate_checkstack(L, 8);
  lua_pushstring(L, kind);
  if (message != NULL) lua_pushstring(L, message);
  else pushtext(L, value);
  if (lua_type(L, traceback) == LUA_TSTRING) lua_pushvalue(L, traceback);
  else lua_pushnil(L);
  if (index != 0) lua_pushinteger(L, index);
  codec_encode(L, b, top + 1, index != 0 ? 4 : 3, ROLE_RESULT);
  if (message == NULL && !lua_isnil(L, value)) {	/* the value, if it can go */
    Buffer *vb = buffer_push(L);
    lua_pushcfunction(L, encode_value);
    lua_pushlightuserdata(L, vb);
    lua_pushvalue(L, value);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK)
      buffer_append(b, vb);
  }
  lua_settop(L, top);
}


int message_putplain (Buffer *b, const char *kind, const char *message) {
  const char *record[3];
  record[0] = kind;
  record[1] = message;
  record[2] = NULL;		/* no traceback */
  return codec_putstrings(b, record, 3);
}


static int decode_value (lua_State *L) {
  if (codec_decode(L, (Reader *)lua_touserdata(L, 1), CODEC_TRUSTED) != 1)
    return luaL_error(L, "isolate: corrupt failure record");
  return 1;
}


/*
** Does the function at level 1 of L see a global 'name' that is not nil?
** Its _ENV if it has one, else the globals table; tables only, read raw,
** through __index tables (an environment that falls back on _G), so that
** no Lua code runs.
*/
static int callerhas (lua_State *L, const char *name, size_t len) {
  lua_Debug ar;
  int i, found = 0, top = lua_gettop(L);
  const char *up;
  isolate_checkstack(L, 8);
  lua_pushnil(L);		/* the caller's _ENV, if it has one */
  if (lua_getstack(L, 1, &ar)) {
    for (i = 1; (up = lua_getlocal(L, &ar, i)) != NULL; i++) {
      if (strcmp(up, "_ENV") == 0) lua_replace(L, top + 1);	/* the last one */
      else lua_pop(L, 1);
    }
    if (lua_isnil(L, top + 1) && lua_getinfo(L, "f", &ar)) {
      for (i = 1; (up = lua_getupvalue(L, -1, i)) != NULL; i++) {
        if (strcmp(up, "_ENV") == 0) {
          lua_replace(L, top + 1);
          break;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);		/* the function */
    }
  }
  if (!lua_istable(L, top + 1)) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_replace(L, top + 1);
  }
  for (i = 0; i < 16 && lua_istable(L, -1); i++) {	/* a bounded chain */
    lua_pushlstring(L, name, len);
    if (lua_rawget(L, -2) != LUA_TNIL) {
      found = 1;
      break;
    }
    lua_pop(L, 1);
    if (!lua_getmetatable(L, -1)) break;
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    lua_remove(L, -2);		/* the metatable */
  }
  lua_settop(L, top);
  return found;
}


/*
** The message of an error in the isolate that comes from a global that
** was nil there, "... (global 'name')", and that the caller has: the
** classic "globals do not travel" mistake gets a hint at its end.
*/
static void hint_global (lua_State *L, int err) {
  const char *msg, *at, *end;
  size_t len;
  lua_getfield(L, err, "kind");
  if (strcmp(lua_tostring(L, -1), "error") != 0) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, err, "message");
  msg = lua_tostring(L, -1);
  if ((at = strstr(msg, "(global '")) == NULL || strstr(msg, "\nhint: ") != NULL) {
    lua_pop(L, 2);
    return;
  }
  at += 9;
  end = strchr(at, '\'');
  len = end != NULL ? (size_t)(end - at) : 0;
  if (len > 0 && callerhas(L, at, len)) {
    lua_pushlstring(L, at, len);
    lua_pushvalue(L, -2);	/* the message, NULs and all */
    lua_pushfstring(L, "\nhint: '%s' is a global in the caller, but globals do not "
                    "travel: capture it as a local upvalue (local %s = %s, "
                    "above the function)", lua_tostring(L, -2), lua_tostring(L, -2),
                    lua_tostring(L, -2));
    lua_concat(L, 2);
    lua_setfield(L, err, "message");
    lua_pop(L, 1);		/* the name */
  }
  lua_pop(L, 2);
}


void message_pushfailure (lua_State *L, Reader *r) {
  static const char *const fields[] = {"kind", "message", "traceback", "index"};
  int i, n = 3, top = lua_gettop(L);
  isolate_checkstack(L, 8);
  if (r->left == 0) {		/* not even the record fitted in memory */
    lua_pushliteral(L, "memory");
    lua_pushliteral(L, "not enough memory");
    lua_pushnil(L);
  }
  else if (((n = codec_decode(L, r, 0)) != 3 &&
            (n != 4 || !lua_isinteger(L, top + 4))) ||
           lua_type(L, top + 1) != LUA_TSTRING ||
           lua_type(L, top + 2) != LUA_TSTRING ||
           (lua_type(L, top + 3) != LUA_TSTRING && !lua_isnil(L, top + 3)))
    luaL_error(L, "isolate: corrupt failure record");
  lua_createtable(L, 0, 5);
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, top + 1 + i);
    lua_setfield(L, -2, fields[i]);
  }
  if (r->left > 0) {
    lua_pushcfunction(L, decode_value);
    lua_pushlightuserdata(L, r);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) lua_setfield(L, -2, "value");
    else lua_pop(L, 1);
  }
  hint_global(L, lua_gettop(L));
  luaL_setmetatable(L, ISOLATE_REMOTEERROR);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
}

/* }====================================================== */
