---@meta isolate

-- LuaCATS annotations of `require "isolate"` for the Lua language server
-- (LuaLS). This file is never loaded at run time: point the language
-- server's `workspace.library` at this folder (`types/`), as the
-- repository's `.luarc.json` does. docs/reference.md is the reference;
-- spec/types_spec.lua checks that this file and the module agree.
--
-- The waits of `isolate` (run, await, map, ...) block the calling OS
-- thread: they do not yield, so they are not marked `@async`. The
-- adapters `isolate.luv` and `isolate.cqueues` (types/isolate/) yield the
-- calling coroutine, and theirs are.

---@alias isolate.Status
---| "queued"    # waiting for a worker
---| "running"   # running now
---| "done"      # returned: await gives its results
---| "failed"    # raised, ran out of memory or exited: await raises its RemoteError
---| "cancelled" # task:cancel() came before its end
---| "closed"    # its __gc was called by hand before its outcome was taken

---@alias isolate.ErrorKind
---| "error"     # the function raised (or a result could not travel back, or init raised)
---| "exit"      # os.exit in the isolate, or isolate.exit in a pool's init or a map call
---| "memory"    # a Lua memory error, the pool's memory_limit, or no memory for a new state
---| "cancelled" # task:cancel(), or the caller's state closed

--- Dart's `Isolate.run()` for Lua 5.4: run a Lua closure in a fresh
--- `lua_State` on another OS thread and get its results back.
---@class isolate
---@field _VERSION string `"isolate 0.1.0"`: the version of the Lua layer, which checks that the C core is the same.
---@field RemoteError metatable The metatable of every `isolate.RemoteError`: `getmetatable(err) == isolate.RemoteError`.
---@field TimeoutError metatable The metatable of every `isolate.TimeoutError`.
local isolate = {}

-- {======================================================
-- Options
-- =======================================================

--- Options of `isolate.pool`. Every field may be left out.
---@class isolate.PoolOptions
---@field size? integer Worker threads, 1 to 1024; tasks past that wait in FIFO order. Default: `isolate.cpus()`.
---@field name? string `isolate.name()` inside its isolates and its threads' OS names; non-empty, no zero bytes.
---@field memory_limit? number A cap in bytes (≥ 1) on each isolate's Lua heap; past it the task fails with kind `"memory"`.
---@field init? function Run in every fresh state before its task (set `package.path`, require modules, define globals).

--- Options of `isolate.map` and `pool:map`.
---@class isolate.MapOptions
---@field chunk? integer Items per chunk, ≥ 1 (past 65,536 counts as 65,536). Default: about four chunks per worker.
---@field progress? boolean|fun(done: integer, total: integer) Called in the caller as chunks are collected; `true`: a progress bar on stderr when it is a terminal.

--- Options of `isolate.decode`.
---@class isolate.DecodeOptions
---@field trusted? boolean Accept bytecode, modules, C functions, the globals table, light userdata and `__isolate` objects: for your own `encode`'s output only.

--- What `isolate.stats()` and `pool:stats()` return.
---@class isolate.Stats
---@field workers integer Worker threads.
---@field busy integer Workers running a task now.
---@field queued integer Tasks waiting for a worker.
---@field done integer Tasks that returned.
---@field failed integer Tasks that failed.
---@field cancelled integer Tasks cancelled.

-- }======================================================


-- {======================================================
-- Errors
-- =======================================================

--- An error raised in an isolate, raised again in the caller.
--- `tostring(err)` is the message, a newline and `remote stack traceback:...`.
---@class isolate.RemoteError
---@field kind isolate.ErrorKind What ended the isolate.
---@field message string `tostring` of the raised value, with its `file:line:` position.
---@field traceback? string The remote stack traceback (`nil` for memory errors and cancels).
---@field value? any The raised value itself when it could travel back.
---@field index? integer Set by `map`: the index of the item whose call failed.
---@field caller? string Where the caller raised it: the traceback from the call of `run`, `await` or `map`.

--- Raised by a wait whose timeout ran out; the task goes on.
--- `tostring(err)` is its message.
---@class isolate.TimeoutError
---@field message string For example `isolate: task 7 did not end within 0.5 seconds`.
---@field timeout number The timeout that ran out, in seconds.

-- }======================================================


-- {======================================================
-- The module
-- =======================================================

--- Runs `fn(...)` in a fresh `lua_State` on the default pool and returns
--- all its results (nils and their count included). `fn` travels as its
--- bytecode with its upvalues copied by value; the arguments travel the
--- same way. Blocks the calling thread.
---
--- Raises the isolate's `isolate.RemoteError`, or a plain error before
--- anything runs for a value that cannot travel.
---@param fn function A Lua function, or a C function of a loaded module.
---@param ... any Its arguments.
---@return any ... The results of `fn(...)`.
function isolate.run(fn, ...) end

--- Queues `fn(...)` on the default pool and returns a task at once.
---@param fn function
---@param ... any
---@return isolate.Task
---@nodiscard
function isolate.spawn(fn, ...) end

--- `{fn(list[1]), fn(list[2]), ...}` (the first result of each call),
--- computed in parallel in chunks, in order. Raises the `RemoteError` of
--- the lowest failing index, with `err.index` set.
---@generic T, R
---@param fn fun(item: T): R
---@param list T[]
---@param opts? isolate.MapOptions
---@return R[]
function isolate.map(fn, list, opts) end

--- Awaits the tasks in list order: `{first result of tasks[1], ...}`.
--- Raises the first error in list order.
---@param tasks isolate.Task[]
---@return any[]
function isolate.all(tasks) end

--- An iterator over the tasks in the order they end, failed and cancelled
--- ones included: `for i, task in isolate.completed(tasks) do ... end`.
--- With `timeout` (seconds, for the whole loop) the iterator raises an
--- `isolate.TimeoutError` when no task ends in time.
---@param tasks isolate.Task[]
---@param timeout? number
---@return fun(): integer, isolate.Task
---@overload fun(tasks: isolate.Task[]): fun(): integer, isolate.Task
function isolate.completed(tasks, timeout) end

--- A pool of its own: its own workers, limits and `init`.
---@param opts? isolate.PoolOptions
---@return isolate.Pool
---@nodiscard
---@overload fun(): isolate.Pool
function isolate.pool(opts) end

--- The default pool's counts.
---@return isolate.Stats
function isolate.stats() end

--- Inside an isolate: ends it at once, with these values as its results.
--- Raises `isolate.exit called outside an isolate` in the main state.
---@param ... any
function isolate.exit(...) end

--- Inside a spawned task: sends the values to its caller, who reads them
--- with `task:receive()` or `task:messages()`. Waits only while the caller
--- has 1,000 messages or 8 MiB not received.
---@param v any The first value; must not be `nil`.
---@param ... any
---@return boolean queued `true` if queued for the caller, `false` if nobody can receive it.
function isolate.emit(v, ...) end

--- A new, empty completions set: one descriptor for many tasks.
---@return isolate.Completions
---@nodiscard
function isolate.completions() end

--- `false` inside an isolate.
---@return boolean
function isolate.ismain() end

--- Inside an isolate, its pool's name; `nil` in the default pool, in a
--- pool without a name, and outside isolates.
---@return string?
function isolate.name() end

--- The number of CPUs this process may use: the default pool's size.
---@return integer
function isolate.cpus() end

---@class isolate.Capture
---@field path string For example `upvalue 'cfg' > field 'names'`.
---@field type type `type()` of the value.
---@field bytes? integer Its encoded size; `nil` if it cannot travel, and for an `__isolate` object.
---@field ok boolean Whether it can travel.
---@field why? string Why it cannot travel.
---@field by? string How it travels without a copy: `name 'string'`, `name`, `__isolate`, `globals` (an `_ENV` upvalue).

--- What `fn` would carry to an isolate (its upvalues, by value, through
--- tables and functions), with paths, types and encoded sizes, and what
--- cannot travel with why. Runs nothing.
---@param fn function
---@return isolate.Capture[]
function isolate.captures(fn) end

--- The values as one byte string (it starts with `"\27ISO"` and a version byte).
---@param ... any
---@return string
function isolate.encode(...) end

--- The values that `s` holds. Without `{trusted = true}` it is data only:
--- bytecode, modules, C functions, the globals table, light userdata and
--- `__isolate` objects are refused.
---@param s string
---@param opts? isolate.DecodeOptions
---@return any ...
---@overload fun(s: string): ...
function isolate.decode(s, opts) end

-- }======================================================


-- {======================================================
-- Tasks
-- =======================================================

--- A computation started by `isolate.spawn` or `pool:spawn`.
--- `tostring(task)` is `isolate.Task 7 (running)`, with its pool's name
--- after the id when it has one.
---@class isolate.Task
local Task = {}

--- Waits for the task's end and returns all its results, or raises its
--- `isolate.RemoteError`; the same each time. With `timeout` (seconds,
--- ≥ 0; `math.huge`: no limit), raises an `isolate.TimeoutError` when the
--- task has not ended in time; the task goes on.
---@param timeout? number
---@return any ...
---@overload fun(self: isolate.Task): ...
function Task:await(timeout) end

--- Waits for the task's end, in any way: `true` once it has ended,
--- `false` on timeout. Never raises the task's error.
---@param timeout? number
---@return boolean ended
---@overload fun(self: isolate.Task): boolean
function Task:wait(timeout) end

--- Like `pcall(task.await, task)`: `true` and the results, or `false`
--- and the `isolate.RemoteError`. Never raises.
---@return boolean ok
---@return any ...
function Task:result() end

--- Stops the task: a queued one never starts, a running one is stopped
--- within about a millisecond of Lua work. `true` if the request came
--- before the task ended (it then ends `"cancelled"`), `false` if it had
--- ended.
---@return boolean
function Task:cancel() end

--- The task's status; never waits.
---@return isolate.Status
function Task:status() end

--- `true` once the status is `"done"`, `"failed"` or `"cancelled"`.
---@return boolean
function Task:done() end

--- The values of the oldest message not received yet, waiting for one;
--- nothing once the task has ended and every message was received. With
--- `timeout`, raises an `isolate.TimeoutError` when none came in time.
---@param timeout? number
---@return any ...
---@overload fun(self: isolate.Task): ...
function Task:receive(timeout) end

--- An iterator over the task's messages, as they come, until it has
--- ended and the last was received: `for a, b in task:messages() do ... end`.
---@return fun(): ...
function Task:messages() end

--- Messages sent and not received yet.
---@return integer
function Task:pending() end

--- A file descriptor readable while the task has a message not received
--- or has ended (made on the first call, closed with the task).
---@return integer fd
function Task:pollfd() end

--- `"r"`: the cqueues pollable protocol.
---@return "r"
function Task:events() end

--- `nil`: the cqueues pollable protocol.
---@return nil
function Task:timeout() end

-- }======================================================


-- {======================================================
-- Pools
-- =======================================================

--- A pool of worker threads made by `isolate.pool`. Closed by
--- `pool:close()`, which is also its `__close`.
---@class isolate.Pool
local Pool = {}

--- `isolate.run` on this pool.
---@param fn function
---@param ... any
---@return any ...
function Pool:run(fn, ...) end

--- `isolate.spawn` on this pool.
---@param fn function
---@param ... any
---@return isolate.Task
---@nodiscard
function Pool:spawn(fn, ...) end

--- `isolate.map` on this pool.
---@generic T, R
---@param fn fun(item: T): R
---@param list T[]
---@param opts? isolate.MapOptions
---@return R[]
function Pool:map(fn, list, opts) end

--- This pool's counts.
---@return isolate.Stats
function Pool:stats() end

--- Takes no more tasks and waits until the ones it has are done. Again:
--- nothing happens.
function Pool:close() end

-- }======================================================


-- {======================================================
-- Completions
-- =======================================================

--- One descriptor for many tasks, made by `isolate.completions()`:
--- readable while some task added has ended and was not taken yet. `#c`
--- counts the tasks not taken yet. Closed by `c:close()`, also its
--- `__close` and `__gc`.
---@class isolate.Completions
---@operator len: integer
local Completions = {}

--- Adds the tasks (a task added twice is there once). Returns the set.
---@param task isolate.Task
---@param ... isolate.Task
---@return isolate.Completions
function Completions:add(task, ...) end

--- Takes the tasks out of the set. Returns the set.
---@param task isolate.Task
---@param ... isolate.Task
---@return isolate.Completions
function Completions:remove(task, ...) end

--- The tasks that ended since the last call, in the order they ended,
--- taken out of the set. Never waits.
---@return isolate.Task[]
function Completions:ended() end

--- As `ended()`, once some task has ended; an empty list when the set is
--- empty or on timeout.
---@param timeout? number
---@return isolate.Task[]
---@overload fun(self: isolate.Completions): isolate.Task[]
function Completions:wait(timeout) end

--- The set's descriptor.
---@return integer fd
function Completions:pollfd() end

--- `"r"`: the cqueues pollable protocol.
---@return "r"
function Completions:events() end

--- `nil`: the cqueues pollable protocol.
---@return nil
function Completions:timeout() end

--- Lets go of the set and closes its descriptor. Again: nothing happens.
function Completions:close() end

-- }======================================================

return isolate
