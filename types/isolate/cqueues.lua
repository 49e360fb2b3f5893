---@meta isolate.cqueues

-- LuaCATS annotations of `require "isolate.cqueues"` (see
-- types/isolate.lua). Called from a coroutine of a cqueues controller,
-- run, await and messages poll instead of blocking; outside one they
-- block, as isolate's own do.

---@class isolate.cqueues
local cqueues = {}

--- `isolate.run` that lets the controller run while it waits.
---@async
---@param fn function
---@param ... any
---@return any ...
function cqueues.run(fn, ...) end

--- The task's results, or its error raised in the calling coroutine.
--- With `timeout` (seconds), an `isolate.TimeoutError` when it has not
--- ended in time; the task goes on.
---@async
---@param task isolate.Task
---@param timeout? number
---@return any ...
function cqueues.await(task, timeout) end

--- An iterator over the task's messages that polls while none has come:
--- `for a, b in cqueues.messages(task) do ... end`.
---@async
---@param task isolate.Task
---@return async fun(): ...
function cqueues.messages(task) end

return cqueues
