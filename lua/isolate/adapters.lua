-- isolate.adapters: what the event-loop adapters (isolate.luv,
-- isolate.cqueues) share.

local isolate = require "isolate"
local Task = require("isolate.core").Task

local M = {}

-- an argument error, as the C core words it, unless 'task' is a task
function M.checktask(task, fname)
  if getmetatable(task) ~= Task then
    error(string.format("bad argument #1 to '%s' (task expected, got %s)", fname, type(task)), 3)
  end
end

-- an argument error unless 'timeout' is nil or a number >= 0
function M.checktimeout(timeout, fname)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then   -- (NaN too)
    error(string.format("bad argument #2 to '%s' (timeout must be a number >= 0)", fname), 3)
  end
end

-- the isolate.TimeoutError of an await that timed out
function M.timeouterror(task, timeout)
  return setmetatable({
    message = string.format("isolate: task %s did not end within %s seconds", tostring(task), timeout),
    timeout = timeout,
  }, isolate.TimeoutError)
end

return M
