-- The event-loop adapters where a failure has taken the process down (a
-- crash in await inside a coroutine), run by luv_spec.lua and
-- cqueues_spec.lua in a subprocess of their own: `adapters.lua MODE`.
--   depth         task:await() on an ended task from fresh coroutines, at
--                 stack depths 0..40 and with 0..20 extra values on the
--                 stack: prints "ok"
--   luv-fds N     N tasks awaited through isolate.luv in coroutines (each
--                 with its pollfd), then 100 read with messages(): prints
--                 "sum S" and "fds BEFORE AFTER" (open descriptors)
--   cqueues-fds N the same in a cqueues controller
local isolate = require "isolate"
local posix = require "posix"
local gc = dofile("spec/poll.lua").gc

io.stdout:setvbuf("no")
local mode, n = arg[1], tonumber(arg[2] or "1000")

-- Warm up an adapter: 'start' starts a wait through it for a task that
-- ends only once this has returned (so the wait surely begins before the
-- end: the adapter makes its descriptor for the ends then), 'finish' runs
-- the loop.
local function warmup(start, finish)
  local path = os.tmpname()
  os.remove(path)
  start(function()
    local t = isolate.spawn(function(p)
      local deadline = os.time() + 10
      local f = io.open(p)
      while not f and os.time() < deadline do f = io.open(p) end
      if f then f:close() end		-- (else the state's close would, later)
      return 1
    end, path)
    return t
  end)
  io.open(path, "w"):close()
  finish()
  os.remove(path)
end

if mode == "depth" then
  local function at(depth, t)
    if depth == 0 then return t:await() end
    return (at(depth - 1, t))
  end
  for d = 0, 40 do
    for pad = 0, 20 do
      local t = isolate.spawn(function() return 1 end)
      assert(t:wait(10))
      local co = coroutine.create(function() return at(d, t) end)
      local args = {}
      for i = 1, pad do args[i] = i end
      local ok, v = coroutine.resume(co, table.unpack(args))
      assert(ok and v == 1, tostring(v))
    end
  end
  print("ok")
elseif mode == "luv-fds" then
  local uv = require "luv"
  local iso = require "isolate.luv"
  local failures = {}
  local function go(fn)
    local co = coroutine.create(function()
      local ok, err = pcall(fn)
      if not ok then failures[#failures + 1] = tostring(err) end
    end)
    assert(coroutine.resume(co))
  end
  local function runloop()
    local stopped = false
    local watchdog = uv.new_timer()
    watchdog:start(20000, 0, function() stopped = true; uv.stop() end)
    watchdog:unref()
    uv.run()
    watchdog:close()
    uv.run("nowait")
    assert(not stopped, "the loop did not end within 20 s")
  end
  warmup(function(spawn) go(function() iso.await(spawn()) end) end, runloop)
  gc()
  local base = posix.fdcount()
  local sum = 0
  for _ = 1, n // 100 do
    for i = 1, 100 do
      go(function()
        local t = isolate.spawn(function(k) return k end, i)
        t:pollfd()
        local v = iso.await(t)		-- (before the sum: the coroutine yields in await)
        sum = sum + v
      end)
    end
    runloop()
    gc()
  end
  for i = 1, 100 do
    go(function()
      local t = isolate.spawn(function(k) isolate.emit(k) return k end, i)
      for v in iso.messages(t) do assert(v == i) end
    end)
  end
  runloop()
  assert(#failures == 0, table.concat(failures, "\n"))
  local deadline = posix.monotonic() + 5
  repeat
    gc()
    uv.run("nowait")
  until posix.fdcount() == base or posix.monotonic() > deadline
  print("sum " .. sum)
  print("fds " .. base .. " " .. posix.fdcount())
elseif mode == "cqueues-fds" then
  local cqueues = require "cqueues"
  local iso = require "isolate.cqueues"
  local cq = cqueues.new()
  local function loop()
    local ok, err = cq:loop(20)
    assert(ok, err)
    assert(cq:empty(), "the controller did not end within 20 s")
  end
  warmup(function(spawn)
    local t = spawn()
    cq:wrap(function() iso.await(t) end)
    cq:step(0)				-- (the coroutine begins its wait)
  end, loop)
  gc()
  local base = posix.fdcount()
  local sum = 0
  for _ = 1, n // 100 do
    for i = 1, 100 do
      cq:wrap(function()
        local t = isolate.spawn(function(k) return k end, i)
        t:pollfd()
        local v = iso.await(t)		-- (before the sum: the coroutine yields in await)
        sum = sum + v
      end)
    end
    loop()
    gc()
  end
  for i = 1, 100 do
    cq:wrap(function()
      local t = isolate.spawn(function(k) isolate.emit(k) return k end, i)
      for v in iso.messages(t) do assert(v == i) end
    end)
  end
  loop()
  local deadline = posix.monotonic() + 5
  repeat gc() until posix.fdcount() == base or posix.monotonic() > deadline
  print("sum " .. sum)
  print("fds " .. base .. " " .. posix.fdcount())
elseif mode == "luv-close-same-turn" or mode == "luv-close-same-task" then
  -- a wake closes another waiting coroutine, whose task ended in the same
  -- turn of the loop, or that waits for the same task (an error in the
  -- adapter would be luv's uncaught error: the process ends)
  local uv = require "luv"
  local iso = require "isolate.luv"
  local sleeper = dofile("spec/poll.lua").sleeper
  local same = mode == "luv-close-same-task"
  local t1 = isolate.spawn(sleeper, 0.05, 1)
  local t2 = same and t1 or isolate.spawn(sleeper, 0.1, 2)
  local B, got, later, bgot = nil, nil, nil, "never"
  local A = coroutine.create(function()
    got = iso.await(t1)
    assert(coroutine.close(B))
    if same then later = iso.await(isolate.spawn(sleeper, 0.2, "later")) end
  end)
  B = coroutine.create(function() bgot = iso.await(t2) end)
  assert(coroutine.resume(A))
  assert(coroutine.resume(B))
  local hold = uv.new_timer()	-- the loop's first turn: both end meanwhile
  hold:start(0, 0, function() t1:wait(10) t2:wait(10) hold:close() end)
  uv.run()
  print(got, bgot, later)
else
  error("usage: adapters.lua depth|luv-fds N|cqueues-fds N|luv-close-same-turn|luv-close-same-task")
end
