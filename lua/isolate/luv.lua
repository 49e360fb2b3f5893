-- isolate.luv: wait for isolates from a luv (libuv) event loop.
--
--   local iso = require "isolate.luv"
--   coroutine.wrap(function()
--     local data = iso.run(function() return heavy() end)   -- the loop runs meanwhile
--   end)()
--   uv.run()
--
-- run, await and messages yield the calling coroutine and resume it from
-- the loop when the task ends (or sends a message); outside a coroutine
-- they block, as isolate's own do, so one code path works both ways.
-- spawn(fn, ..., callback) is the callback form.
--
-- Every wait for an end shares one descriptor (an isolate.completions
-- set) and one uv_poll on it, which keeps the loop alive only while
-- somebody waits (a referenced handle then, unreferenced else); a task
-- whose messages are read has a uv_poll on its own descriptor meanwhile.

local isolate = require "isolate"
local core = require "isolate.core"
local uv = require "luv"

local adapters = require "isolate.adapters"
local checktask, checktimeout, timeouterror =
  adapters.checktask, adapters.checktimeout, adapters.timeouterror

local M = {}

local unpack = table.unpack

local ends                      -- isolate.completions(), made on first use
local endpoll                   -- a uv_poll on its descriptor
local waiting = {}              -- task -> list of waits {fn = f}, f called at its end
local nwaiting = 0              -- waits not called nor cancelled yet

-- one more (n = 1) or fewer (n = -1) wait: the poll keeps the loop alive
-- while some wait is armed
local function counted(n)
  nwaiting = nwaiting + n
  if nwaiting == 0 then endpoll:unref()
  elseif nwaiting == n and n > 0 then endpoll:ref() end
end

-- Call f(arg) for each wait {fn = f} of 'waits' still armed, disarming
-- it (and counting it out of 'nwaiting' if 'counts'): a wait that one of
-- these calls cancels (its coroutine closed) is not called, nor counted
-- twice.  An error is raised after all have run (luv reports it as an
-- error in a callback).
local function callall(waits, arg, counts)
  local failure
  for i = 1, #waits do
    local fn = waits[i].fn
    if fn then
      waits[i].fn = nil
      if counts then counted(-1) end
      local ok, err = xpcall(fn, debug.traceback, arg)
      if not ok and failure == nil then failure = err end
    end
  end
  if failure ~= nil then error(failure, 0) end
end

local function dispatch()
  local failure
  for _, task in ipairs(ends:ended()) do
    local waits = waiting[task]
    waiting[task] = nil
    if waits then                 -- (nil: every wait was cancelled meanwhile)
      local ok, err = pcall(callall, waits, task, true)
      if not ok and failure == nil then failure = err end
    end
  end
  if failure ~= nil then error(failure, 0) end
end

-- Call fn(task) from the loop once 'task' has ended (never before this
-- returns).  Returns a function that cancels the call; the loop is kept
-- alive while some call is armed.
local function onend(task, fn)
  if ends == nil then
    ends = isolate.completions()
    endpoll = uv.new_poll(ends:pollfd())
    endpoll:start("r", dispatch)      -- for good: it keeps the loop alive only
    endpoll:unref()                   -- while somebody waits (ref)
  end
  local waits = waiting[task]
  if waits == nil then
    waits = {}
    waiting[task] = waits
    ends:add(task)
  end
  local w = {fn = fn}
  waits[#waits + 1] = w
  counted(1)
  return function()
    if w.fn then
      w.fn = nil
      counted(-1)
      for _, other in ipairs(waits) do
        if other.fn then return end
      end
      if waiting[task] == waits then    -- nobody waits for it now: the set
        waiting[task] = nil             -- lets go (an emit past the limit waits
        ends:remove(task)               -- for a reader again)
      end
    end
  end
end

-- Call fn() from the loop once task:pollfd() is readable (a message or
-- the end); returns a function that cancels the call.  One uv_poll per
-- task (libuv takes one per descriptor), closed when nobody waits on it.
local readers = {}              -- task -> {poll = uv_poll, waits = {...}, n = armed}
local function onreadable(task, fn)
  local r = readers[task]
  local function release()
    if r.n == 0 and readers[task] == r then
      readers[task] = nil
      r.poll:stop()
      r.poll:close()
    end
  end
  if r == nil then
    r = {poll = uv.new_poll(task:pollfd()), waits = {}, n = 0}
    readers[task] = r
    r.poll:start("r", function()
      local waits = r.waits
      r.waits, r.n = {}, 0
      release()
      callall(waits)
    end)
  end
  local w = {fn = fn}
  r.waits[#r.waits + 1] = w
  r.n = r.n + 1
  return function()
    if w.fn then
      w.fn = nil
      r.n = r.n - 1
      release()
    end
  end
end

-- the running coroutine if the loop can resume it, else nil
local function yieldable()
  local co, main = coroutine.running()
  if main or not coroutine.isyieldable() then return nil end
  return co
end

-- Yield 'co' until wake(...) is called by arm(wake); returns its values.
-- arm returns a function that disarms what it armed: called when the
-- coroutine is closed meanwhile (coroutine.close), so that nothing waits
-- for it any more.  Values from any other resume of 'co' are ignored: it
-- yields again.
local function suspend(co, arm)
  local token, woken = {}, nil
  local disarm = arm(function(...)
    if woken == nil and coroutine.status(co) == "suspended" then
      woken = table.pack(...)
      local ok, err = coroutine.resume(co, token)
      if not ok then error(err, 0) end
    end
  end)
  local guard <close> = setmetatable({}, {__close = function()
    if woken == nil then woken = false; disarm() end
  end})
  repeat
    local got = coroutine.yield()
  until got == token and woken
  return unpack(woken, 1, woken.n)
end

-- await(task [, timeout]): the task's results, or its error raised here
function M.await(task, timeout)
  checktask(task, "await")
  checktimeout(timeout, "await")
  local co = yieldable()
  if co == nil or task:done() then return core.awaitfrom(task, 1, timeout) end
  local ended = suspend(co, function(wake)
    local timer, cancel
    local function stoptimer()
      if timer then timer:stop(); timer:close(); timer = nil end
    end
    cancel = onend(task, function() stoptimer(); wake(true) end)
    if timeout ~= nil and timeout * 1000 < 2^53 then   -- (past it: no limit, as math.huge)
      timer = uv.new_timer()
      uv.update_time()          -- (the loop's clock is as old as its last turn)
      timer:start(math.ceil(timeout * 1000), 0, function()
        stoptimer()
        cancel()                  -- the loop does not wait for the task now
        wake(false)
      end)
    end
    return function() stoptimer(); cancel() end
  end)
  if not ended then error(timeouterror(task, timeout), 2) end
  return core.awaitfrom(task, 1)
end

-- run(fn, ...): isolate.run that lets the loop run while it waits
function M.run(fn, ...)
  return M.await(isolate.spawn(fn, ...))
end

-- spawn(fn, ..., callback): the task; callback(true, ...) with its results
-- or callback(false, err) is called from the loop when it ends
function M.spawn(fn, ...)
  local n = select("#", ...)
  local callback = n > 0 and select(n, ...) or nil
  if type(callback) ~= "function" then
    error("bad argument #" .. (n + 1) .. " to 'spawn' (callback function expected as the last argument)", 2)
  end
  local args = table.pack(...)
  local task = isolate.spawn(fn, unpack(args, 1, n - 1))
  onend(task, function() callback(task:result()) end)
  return task
end

-- for ... in messages(task) do: the task's messages as they come
function M.messages(task)
  checktask(task, "messages")
  return function()
    local co = yieldable()
    while co ~= nil and task:pending() == 0 and not task:done() do
      suspend(co, function(wake) return onreadable(task, wake) end)
    end
    return task:receive()
  end
end

return M
