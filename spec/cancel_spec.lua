local isolate = require "isolate"
local poll = dofile("spec/poll.lua")
local now, eventually, exists, touch, marker, await_file =
  poll.now, poll.eventually, poll.exists, poll.touch, poll.marker, poll.await_file

-- Wait (bounded) until the task has left the queue; it must be running.
local function running(task)
  assert.is_true(eventually(function() return task:status() ~= "queued" end, 5),
    "the task did not start within 5 s")
  assert.equal("running", task:status())
end

-- Endless as far as cancel can tell: pure Lua, but for a clock read once
-- in a million turns, by which it gives up after 'seconds' (default 20),
-- so that a cancel that does not work fails a spec instead of holding a
-- worker of the default pool for the rest of the run.
local function endless(seconds)
  local deadline = os.time() + (seconds or 20)
  local n = 0
  while true do
    n = n + 1
    if n == 1000000 then
      if os.time() > deadline then return "not cancelled" end
      n = 0
    end
  end
end

-- Whether cancel stops a running loop at all, found out once.  The specs
-- that start a truly endless loop (`while true do end`, which nothing but
-- cancel ends) ask first: with a cancel that does not work they fail at
-- once, and leave the pool's workers free for the specs that follow.
local cancel_works
local function endless_allowed()
  if cancel_works == nil then
    local ok, works = pcall(function()
      local task = isolate.spawn(endless, 10)
      return eventually(function() return task:status() == "running" end, 5)
        and task:cancel() == true and task:wait(5) and task:status() == "cancelled"
    end)
    cancel_works = ok and works == true
  end
  assert(cancel_works, "task:cancel() does not stop a plain loop: no endless loop started")
end

-- Spawn fn, which touches 'ready' where the spec wants it stopped and then
-- loops; wait (bounded) until it is there.
local function spawn_ready(fn)
  local ready = marker()
  local task = isolate.spawn(fn, ready)
  assert.is_true(await_file(ready, 5), "the isolate did not get ready within 5 s")
  os.remove(ready)
  return task
end

-- Cancel a task that never ends by itself: cancel() is true, it ends
-- within 5 s, cancelled, and await raises the RemoteError of kind
-- "cancelled".  Returns that error.
local function cancels(task)
  local t0 = now()
  assert.is_true(task:cancel())
  assert.is_true(task:wait(5), "still running 5 s after cancel()")
  assert.is_true(now() - t0 < 5)
  assert.equal("cancelled", task:status())
  local ok, err = pcall(task.await, task)
  assert.is_false(ok)
  assert.equal(isolate.RemoteError, getmetatable(err))
  assert.equal("cancelled", err.kind)
  assert.is_nil(err.traceback)
  return err
end

describe("task:cancel()", function()
  it("stops a running loop when the process had no real-time signal left: the isolate polls (subprocess)", function()
    if os.getenv("ISOLATE_SPEC_UNDER_TOOL") then
      -- (a sanitizer's runtime holds LD_PRELOAD, a TSan build polls anyway;
      -- under valgrind, which runs one thread at a time, a worker in a
      -- tight loop starved this process's main thread for seconds after
      -- the subprocess, and the specs that follow failed)
      pending("a plain run's spec: LD_PRELOAD and signals are the tools' own under them")
      return
    end
    local sub = dofile("spec/subprocess.lua")
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local isolate = require "isolate"
local task = isolate.spawn(function() while true do end end)
os.execute("sleep 0.3")                 -- (it is in the loop by then)
assert(task:status() == "running")
io.write(tostring(task:cancel()), " ", tostring(task:wait(5)), " ", task:status(), "\n")
io.stdout:flush()
os.exit(0)
]])
    f:close()
    local r = sub.run(script, {}, {timeout = 20, preload = "build/spec/rtsig.so"})
    os.remove(script)
    assert.equal(0, r.code, r.report)
    assert.equal("true true cancelled\n", r.stdout)
  end)

  it("stops `while true do end` within 5 s: await raises a RemoteError of kind cancelled", function()
    endless_allowed()
    local task = isolate.spawn(function() while true do end end)
    running(task)
    local t0 = now()
    assert.is_true(task:cancel())
    assert.is_true(task:wait(5), "still running 5 s after cancel()")
    local ok, err = pcall(task.await, task)
    local took = now() - t0
    assert.is_false(ok)
    assert.is_true(took < 5, string.format("await raised %.1f s after cancel()", took))
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.equal("cancelled", err.kind)
    assert.equal("string", type(err.message))
    assert.is_nil(err.traceback)
  end)

  it("leaves the task ended: status cancelled, done, wait true, result false and the error", function()
    local task = isolate.spawn(endless)
    running(task)
    assert.is_true(task:cancel())
    assert.is_true(task:wait(5))
    assert.equal("cancelled", task:status())
    assert.is_true(task:done())
    assert.is_true(task:wait())
    assert.is_true(task:wait(0))
    local ok, err = task:result()
    assert.is_false(ok)
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.equal("cancelled", err.kind)
    assert.is_nil(err.traceback)
    -- await raises it each time
    local ok2, err2 = pcall(task.await, task)
    assert.is_false(ok2)
    assert.equal("cancelled", err2.kind)
  end)

  it("returns false for a task that has ended: done or failed, which it leaves as they were", function()
    local done = isolate.spawn(function() return 1 end)
    assert.equal(1, done:await())
    assert.is_false(done:cancel())
    assert.equal("done", done:status())
    assert.equal(1, done:await())

    local failed = isolate.spawn(function() error("boom") end)
    assert.is_true(failed:wait(5))
    assert.is_false(failed:cancel())
    assert.equal("failed", failed:status())
    local ok, err = failed:result()
    assert.is_false(ok)
    assert.equal("error", err.kind)
    assert.matches("boom$", err.message)
  end)

  it("ends the task cancelled whenever it returned true, even in a race with the task's end", function()
    local requested, late = 0, 0
    for i = 1, 200 do
      local n = (i % 20) * 500
      local task = isolate.spawn(function(k) local s = 0 for j = 1, k do s = s + j end return s end, n)
      if i % 5 == 0 then
        assert.is_true(task:wait(5))	-- surely ended: cancel() is false
      else
        for _ = 1, (i % 7) * 200 do end	-- a varying head start
      end
      local was = task:cancel()
      assert.is_true(task:wait(5))
      if was then
        requested = requested + 1
        assert.equal("cancelled", task:status())
        local ok, err = task:result()
        assert.is_false(ok)
        assert.equal("cancelled", err.kind)
      else
        late = late + 1
        assert.equal("done", task:status())
        assert.equal(n * (n + 1) // 2, task:await())
      end
    end
    assert.is_true(requested > 0 and late > 0, requested .. " cancelled in time, " .. late .. " late")
  end)

  it("stops a loop inside a coroutine.wrap", function()
    endless_allowed()
    cancels(spawn_ready(function(ready)
      coroutine.wrap(function()
        local f = io.open(ready, "w"); f:close()
        while true do end
      end)()
    end))
  end)

  it("stops a loop inside a coroutine.resume, and inside one nested in it", function()
    endless_allowed()
    cancels(spawn_ready(function(ready)
      local co = coroutine.create(function()
        local f = io.open(ready, "w"); f:close()
        while true do end
      end)
      return coroutine.resume(co)
    end))
    cancels(spawn_ready(function(ready)
      local outer = coroutine.create(function()
        local inner = coroutine.create(function()
          local f = io.open(ready, "w"); f:close()
          while true do end
        end)
        return coroutine.resume(inner)
      end)
      return coroutine.resume(outer)
    end))
  end)

  it("stops a loop in Lua code called back from a C function", function()
    cancels(spawn_ready(function(ready)
      local f = io.open(ready, "w"); f:close()
      table.sort({3, 2, 1}, function() endless() return false end)
    end))
  end)

  it("is not caught by pcall or xpcall inside the isolate", function()
    endless_allowed()
    cancels(spawn_ready(function(ready)
      local f = io.open(ready, "w"); f:close()
      while true do pcall(function() while true do end end) end
    end))
    cancels(spawn_ready(function(ready)
      local f = io.open(ready, "w"); f:close()
      while true do xpcall(function() while true do end end, debug.traceback) end
    end))
  end)

  it("never starts a queued task: it is cancelled at once", function()
    local release, ran = marker(), marker()
    local blockers = {}
    for i = 1, isolate.cpus() do
      blockers[i] = isolate.spawn(function() return await_file(release, 10) end)
    end
    for i = 1, #blockers do running(blockers[i]) end
    local queued = isolate.spawn(function() touch(ran, "ran") end)
    assert.equal("queued", queued:status())
    assert.is_true(queued:cancel())
    assert.equal("cancelled", queued:status())
    assert.is_true(queued:done())
    assert.is_true(queued:wait(0))
    touch(release)
    for i = 1, #blockers do assert.is_true(blockers[i]:await()) end
    -- the queue is first in, first out: had the cancelled task stayed in
    -- it, it would run before these
    for i = 1, isolate.cpus() do assert.equal(i, isolate.run(function() return i end)) end
    local ok, err = pcall(queued.await, queued)
    os.remove(release)
    assert.is_false(exists(ran), "the cancelled task ran")
    assert.is_false(ok)
    assert.equal("cancelled", err.kind)
    assert.is_nil(err.traceback)
  end)

  it("closes the state normally: to-be-closed variables run", function()
    local closed = marker()
    cancels(spawn_ready(function(ready)
      local x <close> = setmetatable({}, {__close = function()
        local f = io.open(closed, "w"); f:write("closed"); f:close()
      end})
      local f = io.open(ready, "w"); f:close()
      endless()
    end))
    -- the isolate's state may be closed after the task has ended
    assert.is_true(eventually(function() return poll.read(closed) == "closed" end, 10),
      "__close did not run")
    os.remove(closed)
  end)

  it("closes the state normally: finalizers run", function()
    local collected = marker()
    cancels(spawn_ready(function(ready)
      local x = setmetatable({}, {__gc = function()
        local f = io.open(collected, "w"); f:write("collected"); f:close()
      end})
      local f = io.open(ready, "w"); f:close()
      endless()
      return x
    end))
    -- (the file exists before its text is written: wait for the text)
    assert.is_true(eventually(function() return poll.read(collected) == "collected" end, 10),
      "__gc did not run")
    os.remove(collected)
  end)

  it("is idempotent: a second cancel never raises, and one after the end is false", function()
    local task = isolate.spawn(endless)
    running(task)
    assert.is_true(task:cancel())
    assert.is_boolean(task:cancel())
    assert.is_true(task:wait(5))
    assert.is_false(task:cancel())
    assert.equal("cancelled", task:status())
    assert.matches("^isolate.Task %d+.*%(cancelled%)$", tostring(task))

    local release = marker()
    local blockers = {}
    for i = 1, isolate.cpus() do blockers[i] = isolate.spawn(function() return await_file(release, 10) end) end
    local queued = isolate.spawn(function() return 1 end)
    assert.is_true(queued:cancel())
    assert.is_false(queued:cancel())
    assert.matches("%(cancelled%)$", tostring(queued))
    touch(release)
    for i = 1, #blockers do blockers[i]:await() end
    os.remove(release)
  end)

  it("leaves the pool running new work, every worker of it cancelled", function()
    local tasks = {}
    for i = 1, isolate.cpus() do tasks[i] = isolate.spawn(endless) end
    for i = 1, #tasks do running(tasks[i]) end
    for i = 1, #tasks do assert.is_true(tasks[i]:cancel()) end
    local after = isolate.spawn(function() return 1 end)
    assert.is_true(after:wait(5), "the pool runs nothing after the cancel")
    assert.equal(1, after:await())
    assert.equal(1, isolate.run(function() return 1 end))
    -- (a cancelled task ends as soon as its thread runs again: on two CPUs
    -- that may come after the new work)
    for i = 1, #tasks do
      assert.is_true(tasks[i]:wait(5))
      assert.equal("cancelled", tasks[i]:status())
    end
  end)

  it("works inside an isolate, on a task of its own", function()
    local was, ended, status = isolate.run(function()
      local task = isolate.spawn(endless)
      local deadline = os.time() + 5
      while task:status() == "queued" and os.time() < deadline do end
      return task:cancel(), task:wait(5), task:status()
    end)
    assert.is_true(was)
    assert.is_true(ended)
    assert.equal("cancelled", status)
  end)

  it("costs nothing until it is asked for: no hook in a healthy isolate", function()
    if require("isolate.core")._cancelpolls then
      -- ThreadSanitizer holds signals back from a thread that runs only Lua
      -- code, so a core built under it polls with a count hook (isolate.h)
      pending("a core built under ThreadSanitizer polls for cancels")
      return
    end
    assert.is_nil(isolate.run(function() return debug.gethook() end))
    assert.is_nil(isolate.run(function() return coroutine.wrap(function() return debug.gethook() end)() end))
  end)

  it("checks its self", function()
    local task = isolate.spawn(function() return 1 end)
    local ok, err = pcall(function() task.cancel(42) end)
    assert.is_false(ok)
    assert.matches("isolate.Task expected, got number", err, 1, true)
    assert.equal(1, task:await())
  end)

  it("reaches the nested isolate that its task's thread runs while it waits", function()
    -- keep the other workers busy, so that the child stays queued and the
    -- task's own thread runs it
    local blockers = {}
    for i = 2, isolate.cpus() do
      blockers[#blockers + 1] = isolate.spawn(function(f) return f(1) end, endless)
    end
    local task = isolate.spawn(function(f)
      return require("isolate").run(f)
    end, endless)
    running(task)
    assert.is_true(task:cancel())
    assert.is_true(task:wait(5), "the task did not end within 5 s of its cancel")
    assert.equal("cancelled", task:status())
    for _, b in ipairs(blockers) do b:cancel() end
  end)
end)
