-- isolate: Dart's Isolate.run() for Lua 5.4.
-- The Lua layer over the C core (isolate.core); API.md is the contract.

local core = require "isolate.core"

local isolate = {
  _VERSION = "isolate scm",

  -- One computation: run fn(...) in a fresh state on a worker thread and
  -- return its results, or raise its error as an isolate.RemoteError.
  run = core.run,

  -- The same, without waiting: a task whose await() returns the results.
  spawn = core.spawn,

  -- Inside an isolate: end it now with these results.
  exit = core.exit,

  ismain = core.ismain,
  name = core.name,       -- the pool's name inside an isolate; nil for the default pool
  cpus = core.cpus,

  -- The codec on its own: values to a byte string and back.
  encode = core.encode,
  decode = core.decode,

  -- The metatable of every error that comes back from an isolate, and of
  -- the error that await raises when its timeout runs out.
  RemoteError = core.RemoteError,
  TimeoutError = core.TimeoutError,
}

return isolate
