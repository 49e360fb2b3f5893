-- isolate.cqueues: wait for isolates inside a cqueues controller.
--
--   local iso = require "isolate.cqueues"
--   local cq = cqueues.new()
--   cq:wrap(function()
--     local data = iso.run(function() return heavy() end)   -- the controller runs meanwhile
--   end)
--   assert(cq:loop())
--
-- run, await and messages poll from the calling coroutine when a
-- controller runs it, and block outside one, as isolate's own do.  A task
-- is a cqueues pollable itself (cqueues.poll(task) returns when it has
-- ended or has a message).
--
-- Waits for an end share one descriptor per controller (an
-- isolate.completions set), which one coroutine of the controller polls
-- while somebody waits: it signals a condition variable per task.  A
-- waiting coroutine that is closed or cancelled waits no more.

local isolate = require "isolate"
local core = require "isolate.core"
local cqueues = require "cqueues"
local condition = require "cqueues.condition"

local adapters = require "isolate.adapters"
local checktask, checktimeout, timeouterror =
  adapters.checktask, adapters.checktimeout, adapters.timeouterror

local M = {}

-- What each controller has: its set, the condition of each task in it,
-- the awaits under way, and the condition that stops its poller when
-- none is left (so that a task that never ends keeps no controller busy
-- once nobody waits for it).
local loops = setmetatable({}, {__mode = "k"})

local function loopof(cq)
  local l = loops[cq]
  if l == nil then
    l = {ends = isolate.completions(), conds = {}, counts = {}, waits = 0, polling = false,
         idle = condition.new()}
    loops[cq] = l
  end
  return l
end

local function poller(l)
  while l.waits > 0 do
    cqueues.poll(l.ends, l.idle)
    for _, t in ipairs(l.ends:ended()) do
      local c = l.conds[t]
      l.conds[t], l.counts[t] = nil, nil
      c:signal()
    end
  end
  l.polling = false
end

-- Wait in the controller 'cq' until 'task' has ended or 'deadline'
-- (cqueues.monotime) has passed; true if it has ended.
local function waitend(cq, task, deadline)
  local l = loopof(cq)
  local cond = l.conds[task]
  if cond == nil then
    cond = condition.new()
    l.conds[task] = cond
    l.counts[task] = 0
    l.ends:add(task)
  end
  l.waits = l.waits + 1
  l.counts[task] = l.counts[task] + 1
  local counted <close> = setmetatable({}, {__close = function()   -- even if the coroutine is closed
    l.waits = l.waits - 1
    if l.waits == 0 then l.idle:signal() end
    if l.conds[task] == cond then
      l.counts[task] = l.counts[task] - 1
      if l.counts[task] == 0 and not task:done() then
        l.conds[task], l.counts[task] = nil, nil   -- nobody waits for it: the set
        l.ends:remove(task)                      -- lets go (an emit past the limit
        cond:signal()                            -- waits for a reader again); and
      end                                        -- cqueues forgets a closed waiter
    end
  end})
  if not l.polling then
    l.polling = true
    cq:wrap(poller, l)
  end
  while not task:done() do
    local left = deadline and deadline - cqueues.monotime()
    if left and left <= 0 then return false end
    cqueues.poll(cond, left or nil)
  end
  return true
end

-- await(task [, timeout]): the task's results, or its error raised here
function M.await(task, timeout)
  checktask(task, "await")
  checktimeout(timeout, "await")
  local cq = cqueues.running()
  if cq == nil or task:done() then return core.awaitfrom(task, 1, timeout) end
  local deadline = timeout and timeout ~= math.huge and cqueues.monotime() + timeout
  if not waitend(cq, task, deadline or nil) then error(timeouterror(task, timeout), 2) end
  return core.awaitfrom(task, 1)
end

-- run(fn, ...): isolate.run that lets the controller run while it waits
function M.run(fn, ...)
  return M.await(isolate.spawn(fn, ...))
end

-- for ... in messages(task) do: the task's messages as they come
function M.messages(task)
  checktask(task, "messages")
  return function()
    if cqueues.running() ~= nil then
      while task:pending() == 0 and not task:done() do cqueues.poll(task) end
    end
    return task:receive()
  end
end

return M
