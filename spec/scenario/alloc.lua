-- Allocation failures at every point of a step, run by alloc_spec.lua in a
-- subprocess of its own: `host alloc.lua PART`, where host is build/host
-- (spec/host.c), whose global host_failalloc(n) makes the n-th allocation
-- request of this state fail.  PART is
--   run      isolate.run(function(t, f) return t, f(2) end, graph, fn)
--   spawn    the same with isolate.spawn and task:await
--   codec    isolate.decode(isolate.encode(graph, fn), {trusted = true})
--   big      isolate.decode(isolate.encode(big)), then isolate.run of it:
--            a string and an array part big enough to be made in
--            prefaulted memory (ISOLATE_PREFAULT), through this state's
--            allocator wrapped for each of them
--   isolate  the allocations of the isolate instead, through the core's
--            _failalloc(n): the next isolate that runs a job fails the
--            n-th allocation it makes after its job starts
-- A step first runs once to count its requests, N; then, for every n, the
-- step runs with the n-th failing.  It must either succeed with the right
-- answer or raise a memory error: "not enough memory" as a string, or a
-- RemoteError of kind "memory" (or of kind "error" with that message).
-- After every step a plain isolate.run must still work.  Prints a summary
-- and exits 0 only if every step passed.
local isolate = require "isolate"
local core = require "isolate.core"

local part = arg[1]

-- {{{ the value graph: nested tables, a shared table, cycles, strings,
-- closures with upvalues (one of them in the graph, one sharing the graph),
-- and a chain of tables nested deep enough that encoding and decoding it
-- grow a fresh coroutine's stack
local k, prefix = 40, "n="
local shared = {name = "shared", list = {1, 2, 3}}
local graph = {
  title = "graph",
  long = ("abc"):rep(100),
  a = shared,
  b = {inner = shared, deep = {{{"leaf"}}}},
  list = {},
}
for i = 1, 20 do graph.list[i] = {i = i, s = "item" .. i, f = i + 0.5} end
graph.self = graph
shared.back = graph
local DEPTH = 60
for i = DEPTH, 1, -1 do graph.chain = {i, next = graph.chain} end
graph.add = function(x) return k + x end
local function fn(x) return prefix .. graph.add(x) end

-- big values: a 300 KB string, an array part of 40,001 slots (640 KB)
local big = {s = ("big"):rep(100000), list = {}}
for i = 1, 40000 do big.list[i] = i end
big.list[40001] = "end"

local function isbig(t)
  return type(t) == "table" and t ~= big and t.s == big.s and #t.list == 40001
    and t.list[40000] == 40000 and t.list[40001] == "end"
end

local function chaindepth(c)
  local n = 0
  while type(c) == "table" and c[1] == n + 1 do c, n = c.next, n + 1 end
  return c == nil and n
end

-- a copy of the graph, fresh from a transfer?
local function isgraph(t)
  return type(t) == "table" and chaindepth(t.chain) == DEPTH and t ~= graph and t.self == t and t.a == t.b.inner
    and t.a.back == t and t.title == "graph" and t.long == graph.long
    and #t.a.list == 3 and t.b.deep[1][1][1] == "leaf" and #t.list == 20
    and t.list[20].s == "item20" and t.list[7].f == 7.5
    and type(t.add) == "function" and t.add(2) == 42
end
-- }}}

-- a memory error as the API reports it, in the caller or from an isolate
local function ismemory(err)
  if type(err) == "string" then
    return err:find("not enough memory", 1, true) ~= nil
  end
  return getmetatable(err) == isolate.RemoteError and (err.kind == "memory" or
    err.kind == "error" and tostring(err.message):find("not enough memory", 1, true) ~= nil)
end

local function describe(err)
  if getmetatable(err) == isolate.RemoteError then
    return string.format("RemoteError kind %s: %s", tostring(err.kind), tostring(err.message))
  end
  return type(err) .. " " .. tostring(err)
end

local function plainrun()
  local ok, r = pcall(isolate.run, function() return 1 end)
  return ok and r == 1
end

local failures, stats = {}, {steps = 0, ok = 0, absorbed = 0, memory = 0, reawait = 0}

local function fail(n, what)
  failures[#failures + 1] = string.format("n = %d: %s", n, what)
end

-- {{{ the caller's allocations
local last_task		-- the spawn step's task, to await it again after a failure

local steps = {
  run = {
    function() return isolate.run(function(t, f) return t, f(2) end, graph, fn) end,
    function(t, v) return isgraph(t) and v == "n=42" end,
  },
  spawn = {
    function()
      last_task = nil
      last_task = isolate.spawn(function(t, f) return t, f(2) end, graph, fn)
      return last_task:await()
    end,
    function(t, v) return isgraph(t) and v == "n=42" end,
  },
  big = {
    function() return isolate.decode(isolate.encode(big)), isolate.run(function(b) return b end, big) end,
    function(t, u) return isbig(t) and isbig(u) end,
  },
  codec = {
    function() return isolate.decode(isolate.encode(graph, fn), {trusted = true, functions = true}) end,
    function(t, f) return isgraph(t) and type(f) == "function" and f(2) == "n=42" end,
  },
}

-- Run 'step' with the n-th request failing (0: none).  The arming and the
-- disarming are inside the protected call, so that no failure escapes it;
-- the call is a fresh coroutine's, so that each step grows a stack of its
-- own and those requests fail in turn too (in a stack grown by the step
-- before they would not be made).  Returns whether a request failed, then
-- what pcall would.
local function attempt(step, n)
  local function disarm(...)
    local _, fired = host_failalloc(0)
    return fired, ...
  end
  local co = coroutine.create(function()
    host_failalloc(n)
    return disarm(step())
  end)
  local ok, a, b, c = coroutine.resume(co)
  local _, fired = host_failalloc(0)	-- after an error, disarming was skipped
  if ok then return a, true, b, c end
  return fired, false, a
end

local function caller_part(name)
  local step, right = steps[name][1], steps[name][2]
  if host_failalloc == nil then
    print("no host_failalloc: run this with build/host")
    os.exit(2)
  end
  local _, ok, a, b = attempt(step, 0)	-- the first run makes what is cached
  assert(ok and right(a, b), "the step does not work without failures")
  host_failalloc(0)
  ok = coroutine.resume(coroutine.create(step))
  local N = host_failalloc(0)		-- the requests that the step makes
  assert(ok, "the step does not work without failures")
  for n = 1, N + 10 do		-- a little past N: the count may vary with the collector
    local fired, ok2, r1, r2 = attempt(step, n)
    stats.steps = stats.steps + 1
    if ok2 then
      if not right(r1, r2) then
        fail(n, "the step succeeded with a wrong answer")
      elseif fired then
        stats.absorbed = stats.absorbed + 1
      else
        stats.ok = stats.ok + 1
      end
    elseif ismemory(r1) then
      stats.memory = stats.memory + 1
    else
      fail(n, "not a memory error: " .. describe(r1))
    end
    if not ok2 and last_task ~= nil then	-- the task of a failed await
      local ok3, t3, v3 = pcall(last_task.await, last_task)
      if ok3 and right(t3, v3) then
        stats.reawait = stats.reawait + 1
      elseif ok3 or type(t3) ~= "string" and getmetatable(t3) ~= isolate.RemoteError then
        fail(n, "awaiting the task again gave " .. tostring(ok3) .. ", " .. describe(t3))
      end
    end
    last_task = nil
    if not plainrun() then fail(n, "a plain isolate.run fails after it") end
  end
  return N
end
-- }}}

-- {{{ the isolate's allocations, with the core's _failalloc
local STREAK, CAP = 10, 5000

local function job(t)
  local r = {}
  for key, v in pairs(t) do r[#r + 1] = {key, v} end
  return r, string.rep("x", 100)
end

local function right_job(r, s)
  if type(r) ~= "table" or s ~= ("x"):rep(100) then return false end
  local keys, n = {}, 0
  for key in pairs(graph) do keys[key] = true n = n + 1 end
  if #r ~= n then return false end
  for _, kv in ipairs(r) do
    if not keys[kv[1]] then return false end
    keys[kv[1]] = nil
    if kv[1] == "title" and kv[2] ~= "graph" then return false end
    if kv[1] == "self" and not isgraph(kv[2]) then return false end
  end
  return next(keys) == nil
end

-- Step n upwards until STREAK runs in a row succeed: past the last
-- allocation of the job, nothing fails any more (a run that succeeds
-- although its n-th allocation failed is one that got over it).
local function isolate_part()
  if core._failalloc == nil then
    print("no core._failalloc in this core")
    os.exit(3)
  end
  local streak, n = 0, 0
  while streak < STREAK do
    n = n + 1
    if n > CAP then
      fail(n, "runs still fail after " .. CAP .. " steps")
      break
    end
    core._failalloc(n)
    local ok, r, s = pcall(isolate.run, job, graph)
    core._failalloc(0)
    stats.steps = stats.steps + 1
    if ok then
      if right_job(r, s) then
        streak = streak + 1
        stats.ok = stats.ok + 1
      else
        fail(n, "the run succeeded with a wrong answer")
        streak = 0
      end
    else
      streak = 0
      if getmetatable(r) == isolate.RemoteError and ismemory(r) then
        stats.memory = stats.memory + 1
      else
        fail(n, "not a RemoteError for memory: " .. describe(r))
      end
    end
    if not plainrun() then fail(n, "a plain isolate.run fails after it") end
  end
  return n - streak
end
-- }}}

local N
if steps[part] then
  N = caller_part(part)
elseif part == "isolate" then
  N = isolate_part()
else
  print("usage: alloc.lua run|spawn|codec|big|isolate")
  os.exit(2)
end

if stats.memory == 0 then	-- nothing was tested
  failures[#failures + 1] = "no step raised a memory error: the failures never reached the step"
end

local more = ""
if part ~= "isolate" then
  more = string.format(" (%d although a request failed)", stats.absorbed)
end
if part == "spawn" then
  more = more .. string.format("; %d tasks awaited again after a failure gave their results", stats.reawait)
end
print(string.format("%s: %d requests to fail; %d steps: %d succeeded%s, %d memory errors, %d failed",
  part, N, stats.steps, stats.ok + stats.absorbed, more, stats.memory, #failures))
for i = 1, math.min(#failures, 20) do print(failures[i]) end
if #failures > 20 then print("...") end
os.exit(#failures == 0 and 0 or 1, true)	-- closing the state, for leak checkers
