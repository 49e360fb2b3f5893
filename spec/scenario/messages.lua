-- Messages and descriptors where a failure could hang or take down the
-- process, run by messages_spec.lua in a subprocess of its own:
-- `messages.lua MODE [MARKER]`.
--   emfile     pollfd() with no descriptor left: prints "error: <msg>", then
--              "after: <fd>" once descriptors are free again
--   waits      await() without a timeout, result() and isolate.all() on a
--              task blocked in emit (past the queue's bound): each must let
--              it end; prints "<how> <result> <pending>" for each
--   interrupt  prints "ready PID", then blocks in task:receive() on a task
--              that sends nothing (it touches MARKER when it runs); the spec
--              sends SIGINT, which must end the process with "interrupted!"
--   nested     run under `taskset -c 0`, so that the default pool has one
--              worker: an isolate waits for a task it spawned (queued, as
--              the one worker runs the isolate) with completions:wait(),
--              isolate.completed (the task sends 1500 messages) and
--              receive; prints "workers N", then "<how> ok <results>" for
--              each, or "<how> failed <error>" (an await of 8 s at most)
local isolate = require "isolate"
local posix = require "posix"

io.stdout:setvbuf("no")
local mode = arg[1]

-- a task that sends 'n' messages, the first one at once
local function flood(n)
  for i = 1, n do isolate.emit(i) end
  return n
end

-- spawn flood(n), read its first message, and wait (bounded) until its
-- queue is full: it waits in emit then
local function blocked(n)
  local task = isolate.spawn(flood, n)
  assert(task:receive(10) == 1)
  local deadline = posix.monotonic() + 10
  while task:pending() < 999 do	-- (an emitter waits until the queue is half empty)
    assert(posix.monotonic() < deadline, "the queue did not fill within 10 s")
  end
  return task
end

if mode == "emfile" then
  local task = isolate.spawn(function() return 1 end)
  assert(task:wait(10))
  local files = {}
  while true do
    local f = io.open("/dev/null")
    if f == nil then break end
    files[#files + 1] = f
  end
  local ok, err = pcall(task.pollfd, task)
  print("error: " .. (ok and "none" or tostring(err)))
  files[#files]:close()
  files[#files] = nil
  files[#files]:close()
  files[#files] = nil
  print("after: " .. tostring(task:pollfd()))
  for _, f in ipairs(files) do f:close() end
elseif mode == "waits" then
  local t = blocked(3000)
  print("await", t:await(), t:pending())
  t = blocked(3000)
  local ok, r = t:result()
  print("result", ok and r, t:pending())
  t = blocked(3000)
  print("all", isolate.all({t})[1], t:pending())
elseif mode == "interrupt" then
  local marker = arg[2]
  local task = isolate.spawn(function(path)
    io.open(path, "w"):close()
    local deadline = os.time() + 30
    while os.time() < deadline do end
    return "not interrupted"
  end, marker)
  io.stdout:write("ready ", posix.getpid(), "\n")
  local v = task:receive()
  io.stdout:write("returned ", tostring(v), "\n")
elseif mode == "nested" then
  print("workers", isolate.stats().workers)
  local cases = {
    {"completions.wait", function()
      local inner = isolate.spawn(function() return "inner" end)
      local c = isolate.completions():add(inner)
      local list = c:wait()
      return #list, list[1] == inner, inner:await(), #c
    end},
    {"completed", function()
      local inner = isolate.spawn(function()
        for i = 1, 1500 do isolate.emit(i) end
        return "inner"
      end)
      for _ in isolate.completed({inner}) do end
      return inner:pending()
    end},
    {"receive", function()
      local inner = isolate.spawn(function()
        for i = 1, 2500 do isolate.emit(i) end
        return "inner"
      end)
      local n = 0
      for v in inner:messages() do
        n = n + 1
        if v ~= n then error("message " .. n .. " was " .. tostring(v)) end
      end
      return n, inner:await()
    end},
  }
  for _, case in ipairs(cases) do
    local t = isolate.spawn(case[2])
    local r = table.pack(pcall(t.await, t, 8))
    if r[1] then
      print(case[1], "ok", table.unpack(r, 2, r.n))
    else
      t:cancel()
      t:wait(2)
      local e = r[2]
      print(case[1], "failed", type(e) == "table" and e.message or tostring(e))
    end
  end
else
  error("usage: messages.lua emfile|waits|interrupt|nested [MARKER]")
end
