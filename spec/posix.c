/*
** posix.c: the few POSIX calls that the process specs need.
**
** Debian has no luaposix for Lua 5.4, and the specs need only a handful
** of calls: fork a process that has already started the pool, signal a
** process, and collect how a child ended; poll a descriptor and count the
** open ones for the specs of descriptors (task:pollfd()).  `make test` builds this into
** build/spec/posix.so; a spec loads it with "build/spec/?.so" on
** package.cpath, as require "posix".
**
** Errors follow lauxlib's policy: a bad argument raises; a failed call
** (the system said no) returns nil, a message and errno, as io.open does.
*/
#define _POSIX_C_SOURCE 200809L	/* kill, clock_gettime */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"


int luaopen_posix (lua_State *L);


static int failure (lua_State *L, const char *what) {
  int en = errno;			/* before any call that could change it */
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, strerror(en));
  lua_pushinteger(L, en);
  return 3;
}


/*
** The child of a multithreaded process holds only the thread that forked:
** that is the situation under test, so nothing here tries to make it any
** safer (no atfork handlers of our own).  Whatever is buffered in the
** caller's FILEs is copied into the child, so a script flushes first.
*/
static int p_fork (lua_State *L) {
  pid_t pid = fork();
  if (pid < 0) return failure(L, "fork");
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}


/* waitpid(pid) -> "exited", status | "signaled", signal number */
static int p_waitpid (lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int status;
  pid_t r;
  do r = waitpid(pid, &status, 0);
  while (r < 0 && errno == EINTR);	/* lua.c's SIGINT handler, say */
  if (r < 0) return failure(L, "waitpid");
  if (WIFEXITED(status)) {
    lua_pushliteral(L, "exited");
    lua_pushinteger(L, WEXITSTATUS(status));
  }
  else if (WIFSIGNALED(status)) {
    lua_pushliteral(L, "signaled");
    lua_pushinteger(L, WTERMSIG(status));
  }
  else return luaL_error(L, "waitpid: unexpected status %d", status);
  return 2;
}


/* ends the process at once: no atexit handlers, no lua_close, no flush */
static int p__exit (lua_State *L) {
  _exit((int)luaL_optinteger(L, 1, 0));
  return 0;  /* not reached */
}


static int p_getpid (lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}


static const char *const signames[] =
  {"HUP", "INT", "QUIT", "ABRT", "KILL", "USR1", "USR2", "ALRM", "TERM",
   "CONT", "STOP", NULL};
static const int signums[] =
  {SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGKILL, SIGUSR1, SIGUSR2, SIGALRM,
   SIGTERM, SIGCONT, SIGSTOP};

/* kill(pid, name) -> true; the signal by its name without "SIG" */
static int p_kill (lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = signums[luaL_checkoption(L, 2, NULL, signames)];
  if (kill(pid, sig) != 0) return failure(L, "kill");
  lua_pushboolean(L, 1);
  return 1;
}


/*
** alarm(seconds): SIGALRM after that many seconds, which ends a process
** that does not handle it.  A forked child arms one so that a hang in it
** ends as a child killed by signal 14, which its parent can report,
** instead of as a parent stuck forever in waitpid.
*/
static int p_alarm (lua_State *L) {
  lua_Integer s = luaL_checkinteger(L, 1);
  luaL_argcheck(L, 0 <= s && s <= 100000, 1, "out of range");
  lua_pushinteger(L, (lua_Integer)alarm((unsigned)s));
  return 1;
}


/* seconds on a monotonic clock, as a float: os.time counts whole seconds */
static int p_monotonic (lua_State *L) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return failure(L, "clock_gettime");
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}


/*
** poll(fd, ms) -> true if fd is readable within ms milliseconds (0: look
** only), false if not: for the specs of task:pollfd() and
** completions:pollfd(), which socket.select cannot take as raw numbers.
*/
static int p_poll (lua_State *L) {
  struct pollfd pfd;
  lua_Integer ms = luaL_checkinteger(L, 2);
  int r;
  pfd.fd = (int)luaL_checkinteger(L, 1);
  pfd.events = POLLIN;
  pfd.revents = 0;
  luaL_argcheck(L, 0 <= ms && ms <= 600000, 2, "out of range");
  do r = poll(&pfd, 1, (int)ms);
  while (r < 0 && errno == EINTR);
  if (r < 0) return failure(L, "poll");
  if (r > 0 && (pfd.revents & POLLNVAL)) {
    errno = EBADF;
    return failure(L, "poll");
  }
  lua_pushboolean(L, r > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0);
  return 1;
}


/* fdcount() -> the number of descriptors this process has open */
static int p_fdcount (lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  lua_Integer n = 0;
  if (d == NULL) return failure(L, "opendir /proc/self/fd");
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  lua_pushinteger(L, n - 1);	/* not the directory's own */
  return 1;
}


static const luaL_Reg funcs[] = {
  {"fork", p_fork},
  {"waitpid", p_waitpid},
  {"_exit", p__exit},
  {"getpid", p_getpid},
  {"kill", p_kill},
  {"alarm", p_alarm},
  {"monotonic", p_monotonic},
  {"poll", p_poll},
  {"fdcount", p_fdcount},
  {NULL, NULL}
};


int luaopen_posix (lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
