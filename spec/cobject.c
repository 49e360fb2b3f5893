/*
** cobject.c: a C-backed object that travels between isolates through
** __isolate, for spec/objects_spec.lua (the main use case of __isolate,
** as LuaLanes' __lanesclone).
**
** cobject.new() makes a Counter: a full userdata that points at a shared,
** reference-counted struct holding an atomic counter.  Its methods are
** c:inc([n]) (adds n, default 1, and returns the new value), c:get() and
** c:refs().  Its metatable has __gc, which drops the userdata's reference,
** and __isolate, which returns cobject.attach (a C function of a loaded
** module: it travels by name) and a light userdata of the struct pointer
** (light userdata travel as the same pointer between isolates of one
** process).  On the other side cobject.attach(p) takes a reference and
** wraps it in a userdata of that state: both sides count the same counter.
**
** The rule: a light userdata travels without a reference, so the struct
** must outlive the transfer.  The sender's object holds a reference while
** it is alive; the sender must keep it alive until the receiver has
** decoded (attach took its own reference).  isolate.run's arguments are
** so (the caller holds them until run returns); whatever arrives after
** the sender could have dropped its object is not (see objects_spec).
**
** To tell a broken rule from a working one without undefined behaviour,
** a struct whose last reference goes is not given back to the allocator:
** it is marked dead and kept on a list (reachable, so no leak report),
** and cobject.live() counts the structs not dead.  attach() of a dead
** struct raises "cobject: attach of a dead counter" and counts a misuse;
** so does any use of a dead struct (cobject.misuse()).  A struct that
** went dead twice would also count one.  The dead are freed when the
** library is unloaded (the last state that required it closed): nobody
** can attach one then.
*/
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"


#define COUNTER		"cobject.Counter"
#define ALIVE		0x11feu
#define DEAD		0xdeadu

typedef struct Shared {
  atomic_uint magic;		/* ALIVE, or DEAD once the last reference went */
  atomic_long value;
  atomic_long refs;
  struct Shared *next;		/* in 'graveyard', once dead */
} Shared;

static atomic_long live;	/* structs not dead */
static atomic_long misuse;	/* uses of a dead struct */
static pthread_mutex_t gravelock = PTHREAD_MUTEX_INITIALIZER;
static Shared *graveyard;


int luaopen_cobject (lua_State *L);


__attribute__((destructor)) static void bury (void) {
  while (graveyard != NULL) {
    Shared *s = graveyard;
    graveyard = s->next;
    free(s);
  }
}


/* take a reference to a live struct: 0 if it is dead (or was never one) */
static int acquire (Shared *s) {
  long n = atomic_load(&s->refs);
  do {
    if (n <= 0 || atomic_load(&s->magic) != ALIVE) {
      atomic_fetch_add(&misuse, 1);
      return 0;
    }
  } while (!atomic_compare_exchange_weak(&s->refs, &n, n + 1));
  return 1;
}


static void release (Shared *s) {
  long n = atomic_fetch_sub(&s->refs, 1);
  if (n == 1) {
    unsigned alive = ALIVE;
    if (!atomic_compare_exchange_strong(&s->magic, &alive, DEAD)) {
      atomic_fetch_add(&misuse, 1);	/* dead twice */
      return;
    }
    atomic_fetch_sub(&live, 1);
    pthread_mutex_lock(&gravelock);
    s->next = graveyard;
    graveyard = s;
    pthread_mutex_unlock(&gravelock);
  }
  else if (n <= 0) atomic_fetch_add(&misuse, 1);
}


/* a new userdata of this state holding a reference (taken) to 's' */
static void wrap (lua_State *L, Shared *s) {
  Shared **u = (Shared **)lua_newuserdatauv(L, sizeof(Shared *), 0);
  *u = s;
  luaL_setmetatable(L, COUNTER);
}


static Shared *check (lua_State *L, int i) {
  Shared **u = (Shared **)luaL_checkudata(L, i, COUNTER);
  if (*u == NULL) luaL_error(L, "cobject: counter is closed");
  if (atomic_load(&(*u)->magic) != ALIVE) {
    atomic_fetch_add(&misuse, 1);
    luaL_error(L, "cobject: use of a dead counter");
  }
  return *u;
}


static int c_new (lua_State *L) {
  Shared *s = (Shared *)malloc(sizeof(Shared));
  if (s == NULL) return luaL_error(L, "not enough memory");
  atomic_init(&s->magic, ALIVE);
  atomic_init(&s->value, (long)luaL_optinteger(L, 1, 0));
  atomic_init(&s->refs, 0);
  s->next = NULL;
  wrap(L, s);			/* may raise: nothing counted yet */
  atomic_store(&s->refs, 1);
  atomic_fetch_add(&live, 1);
  return 1;
}


/* attach(p): a userdata of this state for the struct at light userdata p */
static int c_attach (lua_State *L) {
  Shared *s = (Shared *)lua_touserdata(L, 1);
  Shared **u;
  luaL_argexpected(L, lua_islightuserdata(L, 1), 1, "light userdata");
  u = (Shared **)lua_newuserdatauv(L, sizeof(Shared *), 0);	/* before the ref */
  *u = NULL;
  luaL_setmetatable(L, COUNTER);
  if (!acquire(s)) return luaL_error(L, "cobject: attach of a dead counter");
  *u = s;
  return 1;
}


static int c_inc (lua_State *L) {
  Shared *s = check(L, 1);
  long by = (long)luaL_optinteger(L, 2, 1);
  lua_pushinteger(L, (lua_Integer)(atomic_fetch_add(&s->value, by) + by));
  return 1;
}


static int c_get (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&check(L, 1)->value));
  return 1;
}


static int c_refs (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&check(L, 1)->refs));
  return 1;
}


/* __isolate: the constructor and its argument, a pointer without a reference */
static int c_isolate (lua_State *L) {
  Shared *s = check(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "cobject");
  lua_getfield(L, -1, "attach");
  lua_pushlightuserdata(L, s);
  return 2;
}


static int c_gc (lua_State *L) {
  Shared **u = (Shared **)luaL_checkudata(L, 1, COUNTER);
  if (*u != NULL) {
    release(*u);
    *u = NULL;
  }
  return 0;
}


static int c_tostring (lua_State *L) {
  Shared **u = (Shared **)luaL_checkudata(L, 1, COUNTER);
  lua_pushfstring(L, "cobject.Counter (%p)", (void *)*u);
  return 1;
}


static int c_live (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&live));
  return 1;
}


static int c_misuse (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&misuse));
  return 1;
}


/* the struct of a counter, as a light userdata (for the specs' checks) */
static int c_pointer (lua_State *L) {
  lua_pushlightuserdata(L, check(L, 1));
  return 1;
}


static const luaL_Reg methods[] = {
  {"inc", c_inc},
  {"get", c_get},
  {"refs", c_refs},
  {NULL, NULL}
};

static const luaL_Reg meta[] = {
  {"__gc", c_gc},
  {"__isolate", c_isolate},
  {"__tostring", c_tostring},
  {NULL, NULL}
};

static const luaL_Reg funcs[] = {
  {"new", c_new},
  {"attach", c_attach},
  {"live", c_live},
  {"misuse", c_misuse},
  {"pointer", c_pointer},
  {NULL, NULL}
};


int luaopen_cobject (lua_State *L) {
  if (luaL_newmetatable(L, COUNTER)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
