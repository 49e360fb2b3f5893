---@meta isolate.luv

-- LuaCATS annotations of `require "isolate.luv"` (see types/isolate.lua).
-- Called from a coroutine, run, await and messages yield it and resume it
-- from the luv loop; outside a coroutine they block, as isolate's own do.

---@class isolate.luv
local luv = {}

--- `isolate.run` that lets the loop run while it waits: the results of
--- `fn(...)`, or its `isolate.RemoteError` raised in the coroutine.
---@async
---@param fn function
---@param ... any
---@return any ...
function luv.run(fn, ...) end

--- The task's results, or its error raised in the calling coroutine.
--- With `timeout` (seconds), an `isolate.TimeoutError` when it has not
--- ended in time; the task goes on.
---@async
---@param task isolate.Task
---@param timeout? number
---@return any ...
function luv.await(task, timeout) end

--- Spawns `fn(...)` (the arguments before the last) and returns the task;
--- the last argument, a function, is called from the loop when the task
--- ends, as `callback(true, results...)` or `callback(false, err)`.
---@param fn function
---@param ... any The arguments of `fn`, then `callback`.
---@return isolate.Task
function luv.spawn(fn, ...) end

--- An iterator over the task's messages that yields the coroutine while
--- none has come: `for a, b in luv.messages(task) do ... end`.
---@async
---@param task isolate.Task
---@return async fun(): ...
function luv.messages(task) end

return luv
