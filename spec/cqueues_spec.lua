-- isolate.cqueues: waiting for isolates inside a cqueues controller, and
-- tasks and completion sets as cqueues pollables.  Every controller runs
-- with a deadline (run() below), so a wait that never ends fails a spec
-- instead of hanging the run; an error in a coroutine comes back from
-- cq:loop, and run() returns it.
local isolate = require "isolate"
local cqueues = require "cqueues"
local iso = require "isolate.cqueues"
local sub = dofile("spec/subprocess.lua")	-- (puts build/spec on package.cpath)
local poll = dofile("spec/poll.lua")
local now, touch, marker = poll.now, poll.touch, poll.marker
local gate, sleeper = poll.gate, poll.sleeper

local UNDER_TOOL = os.getenv("ISOLATE_SPEC_UNDER_TOOL") ~= nil

-- Run the controller until it has nothing left, at most 'seconds'
-- (default 10).  Returns whether it emptied, and the list of the errors
-- its coroutines raised (each as text).
local function run(cq, seconds)
  local deadline = cqueues.monotime() + (seconds or 10)
  local errors = {}
  while not cq:empty() do
    local left = deadline - cqueues.monotime()
    if left <= 0 then break end
    local ok, err = cq:loop(left)
    if not ok then errors[#errors + 1] = tostring(err) end
  end
  return cq:empty(), errors
end

-- run(cq, seconds), asserting that it emptied without an error
local function runs(cq, seconds)
  local empty, errors = run(cq, seconds)
  assert.same({}, errors)
  assert.is_true(empty, "the controller did not end within " .. (seconds or 10) .. " s")
end

describe("isolate.cqueues in a controller", function()
  it("lets a 10 ms ticker run with no gap over 30 ms while run waits 1 s for an isolate", function()
    local cq = cqueues.new()
    local ticks, finished, result, took = {}, false, nil, nil
    cq:wrap(function()
      while not finished do
        ticks[#ticks + 1] = cqueues.monotime()
        cqueues.sleep(0.01)
      end
    end)
    cq:wrap(function()
      local t0 = now()
      result = iso.run(sleeper, 1, "slept")
      took = now() - t0
      finished = true
    end)
    runs(cq, 10)
    assert.equal("slept", result)
    assert.is_true(took >= 0.9, string.format("run took %.3f s", took))
    local gap = 0
    for i = 2, #ticks do gap = math.max(gap, ticks[i] - ticks[i - 1]) end
    assert.is_true(#ticks >= (UNDER_TOOL and 5 or 60), #ticks .. " ticks in 1 s")
    local most = UNDER_TOOL and 0.2 or 0.030	-- (ASan, valgrind: code runs 5 to 50 times slower)
    assert.is_true(gap < most, string.format("a gap of %.1f ms between ticks", gap * 1000))
  end)

  it("100 coroutines, each awaiting its own task, get their own results; errors arrive in the right one", function()
    local cq = cqueues.new()
    local got, errs = {}, {}
    for i = 1, 100 do
      cq:wrap(function()
        local task = isolate.spawn(function(k)
          local t0 = os.clock()
          while os.clock() - t0 < (k % 5) * 0.0005 do end
          if k % 10 == 0 then error({k = k}) end
          return k * k, "r" .. k
        end, i)
        local ok, a, b
        if i % 2 == 0 then
          ok, a, b = pcall(iso.await, task)
        else
          ok, a = pcall(iso.run, function(k)
            if k % 10 == 5 then error("odd " .. k) end
            return k * k
          end, i)
          b = ok and "r" .. i or nil
        end
        if ok then got[i] = {a, b} else errs[i] = a end
      end)
    end
    runs(cq, 20)
    for i = 1, 100 do
      if i % 10 == 0 then
        assert.equal(isolate.RemoteError, getmetatable(errs[i]), "coroutine " .. i)
        assert.equal(i, errs[i].value.k)
      elseif i % 10 == 5 then
        assert.equal(isolate.RemoteError, getmetatable(errs[i]), "coroutine " .. i)
        assert.matches("odd " .. i .. "$", errs[i].value)
      else
        assert.same({i * i, "r" .. i}, got[i], "coroutine " .. i)
      end
    end
  end)

  it("await(task, timeout) raises an isolate.TimeoutError when the task runs on; the task goes on", function()
    local cq = cqueues.new()
    local go = marker()
    local task = isolate.spawn(function(path) gate(path) return "late" end, go)
    local err, took, later, ticks = nil, nil, nil, 0
    cq:wrap(function()
      local t0 = now()
      local ok
      ok, err = pcall(iso.await, task, 0.05)
      took = now() - t0
      assert(not ok, "await returned")
      touch(go)
      later = iso.await(task, 10)
    end)
    cq:wrap(function()			-- the controller runs meanwhile
      while later == nil do
        ticks = ticks + 1
        cqueues.sleep(0.005)
      end
    end)
    runs(cq, 10)
    os.remove(go)
    assert.equal(isolate.TimeoutError, getmetatable(err))
    assert.equal(0.05, err.timeout)
    assert.is_true(took >= 0.04 and took < 2, string.format("took %.3f s", took))
    assert.equal("late", later)
    assert.is_true(ticks >= (UNDER_TOOL and 1 or 3), ticks .. " ticks")	-- (valgrind runs one thread at a time)
  end)

  it("reads 10,000 messages in order with messages(task) while another coroutine's task ends", function()
    local cq = cqueues.new()
    local count, inorder, other, result = 0, true, nil, nil
    cq:wrap(function()
      local task = isolate.spawn(function(n)
        for i = 1, n do isolate.emit(i, "m" .. i) end
        return n
      end, 10000)
      for i, s in iso.messages(task) do
        count = count + 1
        if i ~= count or s ~= "m" .. i then inorder = false end
      end
      result = iso.await(task)
    end)
    cq:wrap(function() other = iso.run(sleeper, 0.01, "other") end)
    runs(cq, 20)
    assert.equal(10000, count)
    assert.is_true(inorder)
    assert.equal(10000, result)
    assert.equal("other", other)
  end)

  it("a waiting coroutine closed with coroutine.close does not stop the others: they complete", function()
    -- cqueues itself reports its closed coroutine once, as "cannot resume
    -- dead coroutine", from cq:loop; the controller goes on
    local cq = cqueues.new()
    local go = marker()
    local a, closedgot, b, c = nil, "never", nil, nil
    cq:wrap(function()
      a = coroutine.running()
      closedgot = iso.await(isolate.spawn(function(path) gate(path) return "a" end, go))
    end)
    cq:wrap(function() b = iso.run(function(path) gate(path) return "b" end, go) end)
    cq:wrap(function()
      cqueues.sleep(0.02)
      assert(coroutine.close(a))
      touch(go)
      c = iso.run(sleeper, 0.05, "c")
    end)
    local empty, errors = run(cq, 10)
    os.remove(go)
    assert.is_true(empty, "the controller did not end within 10 s")
    for _, e in ipairs(errors) do assert.matches("cannot resume dead coroutine", e, 1, true) end
    assert.equal("never", closedgot)
    assert.equal("b", b)
    assert.equal("c", c)
    -- and the adapter still works in this controller
    local d
    cq:wrap(function() d = iso.run(function() return "d" end) end)
    runs(cq, 10)
    assert.equal("d", d)
  end)

  it("two controllers wait at once, each for its own tasks", function()
    local c1, c2 = cqueues.new(), cqueues.new()
    local r1, r2
    c1:wrap(function() r1 = iso.run(sleeper, 0.05, 1) end)
    c2:wrap(function() r2 = iso.run(sleeper, 0.05, 2) end)
    local outer = cqueues.new()
    outer:wrap(function() runs(c1, 10) end)
    outer:wrap(function() runs(c2, 10) end)
    runs(outer, 20)
    assert.equal(1, r1)
    assert.equal(2, r2)
  end)
end)

describe("isolate.cqueues outside a controller", function()
  it("blocks and returns the results, raises the errors, reads the messages", function()
    local r = table.pack(iso.run(function(a) return a, nil, a * 2 end, 21))
    assert.same({21, nil, 42, n = 3}, r)
    assert.equal("awaited", iso.await(isolate.spawn(function() return "awaited" end)))
    local ok, err = pcall(iso.run, function() error("boom") end)
    assert.is_false(ok)
    assert.equal(isolate.RemoteError, getmetatable(err))
    local go = marker()
    local slow = isolate.spawn(function(path) gate(path) return 1 end, go)
    local okt, terr = pcall(iso.await, slow, 0.05)
    assert.is_false(okt)
    assert.equal(isolate.TimeoutError, getmetatable(terr))
    touch(go)
    assert.equal(1, iso.await(slow, 10))
    os.remove(go)
    local m = isolate.spawn(function() for i = 1, 100 do isolate.emit(i) end end)
    local n = 0
    for i in iso.messages(m) do
      n = n + 1
      assert.equal(n, i)
    end
    assert.equal(100, n)
  end)

  it("checks its arguments", function()
    assert.has_error(function() iso.await("task") end)
    assert.has_error(function() iso.await(isolate.spawn(function() end), -1) end)
    assert.has_error(function() iso.messages({}) end)
  end)
end)

describe("cqueues.poll on a task", function()
  it("returns when a message comes or the task ends, not before; a received message no longer counts", function()
    local cq = cqueues.new()
    local go1, go2 = marker(), marker()
    local task = isolate.spawn(function(a, b)
      gate(a)
      isolate.emit("first")
      gate(b)
      return "end"
    end, go1, go2)
    local steps = {}
    cq:wrap(function()
      steps[#steps + 1] = cqueues.poll(task, 0.05) == task and "ready" or "quiet"
      touch(go1)
      steps[#steps + 1] = cqueues.poll(task, 5) == task and "ready" or "quiet"
      steps[#steps + 1] = task:receive(0)
      steps[#steps + 1] = cqueues.poll(task, 0.05) == task and "ready" or "quiet"
      touch(go2)
      steps[#steps + 1] = cqueues.poll(task, 5) == task and "ready" or "quiet"
      steps[#steps + 1] = task:status()
      steps[#steps + 1] = cqueues.poll(task, 0) == task and "ready" or "quiet"
    end)
    runs(cq, 20)
    os.remove(go1)
    os.remove(go2)
    assert.same({"quiet", "ready", "first", "quiet", "ready", "done", "ready"}, steps)
  end)

  it("works outside a controller too", function()
    local task = isolate.spawn(sleeper, 0.05, 1)
    assert.equal(task, cqueues.poll(task, 10))
    assert.is_true(task:done())
  end)

  it("polls a completion set: one wait for many tasks", function()
    local cq = cqueues.new()
    local c = isolate.completions()
    local tasks = {}
    for i = 1, 20 do tasks[i] = isolate.spawn(function(k) return k end, i) end
    c:add(table.unpack(tasks))
    local seen = {}
    cq:wrap(function()
      local n = 0
      while n < 20 do
        assert(cqueues.poll(c, 5) == c, "no end within 5 s")
        for _, t in ipairs(c:ended()) do
          seen[t:await()] = (seen[t:await()] or 0) + 1
          n = n + 1
        end
      end
    end)
    runs(cq, 20)
    for i = 1, 20 do assert.equal(1, seen[i]) end
    c:close()
  end)
end)

-- After an await that timed out, or whose coroutine was closed, nobody
-- waits for the task's end: the controller's completions set lets go of
-- it, and an emitter that nobody reads is held at the queue's bound again.
describe("isolate.cqueues and the bound of a task's messages", function()

  local gatedflood = poll.gatedflood
  local function held(task, go) poll.held(task, go, cqueues.sleep, assert) end

  it("holds again after await(task, timeout) timed out in a controller (which lives on)", function()
    local cq = cqueues.new()
    local go = marker()
    local task = isolate.spawn(gatedflood, go, 5000)
    local err
    cq:wrap(function()
      local ok
      ok, err = pcall(iso.await, task, 0.05)
      assert(not ok, "await returned")
    end)
    runs(cq, 10)
    assert.equal(isolate.TimeoutError, getmetatable(err))
    held(task, go)
    -- and the controller's set still works
    local d
    cq:wrap(function() d = iso.run(function() return "d" end) end)
    runs(cq, 10)
    assert.equal("d", d)
  end)

  it("holds again after the coroutine that awaited the task was closed", function()
    local cq = cqueues.new()
    local go = marker()
    local task = isolate.spawn(gatedflood, go, 5000)
    local a
    cq:wrap(function()
      a = coroutine.running()
      iso.await(task)
    end)
    cq:wrap(function()
      cqueues.sleep(0.02)
      assert(coroutine.close(a))
    end)
    -- (cqueues reports its closed coroutine once, as "cannot resume dead
    -- coroutine", from cq:loop)
    local empty, errors = run(cq, 10)
    for _, e in ipairs(errors) do assert.matches("cannot resume dead coroutine", e, 1, true) end
    assert.is_true(empty, "the controller did not end within 10 s: it still waits for the task")
    assert.equal("dead", coroutine.status(a))
    held(task, go)
  end)

  it("does not hold while another coroutine still awaits the task", function()
    local cq = cqueues.new()
    local go = marker()
    local task = isolate.spawn(gatedflood, go, 3000)
    local result
    cq:wrap(function() pcall(iso.await, task, 0.05) end)
    cq:wrap(function()
      cq:wrap(function()	-- (the gate opens once the first await timed out)
        cqueues.sleep(0.1)
        touch(go)
      end)
      result = iso.await(task, 10)
    end)
    runs(cq, 10)
    os.remove(go)
    assert.equal(3000, result)
    assert.equal(3000, task:pending())
  end)
end)

describe("isolate.cqueues' descriptors", function()
  -- (in a subprocess, as luv_spec's: see the crash in await reported there)
  it("are released after 1,000 awaited tasks and 100 read ones (subprocess)", function()
    local total = UNDER_TOOL and 200 or 1000
    local r = sub.run("spec/scenario/adapters.lua", {"cqueues-fds", tostring(total)}, {timeout = 60})
    assert.equal(0, r.code, r.report)
    assert.equal(tostring(total // 100 * 5050), r.stdout:match("sum (%d+)"), r.report)
    local before, after = r.stdout:match("fds (%d+) (%d+)")
    assert.is_not_nil(before, r.report)
    assert.equal(before, after, "descriptors open before and after\n" .. r.report)
  end)
end)

-- The README's cqueues example, as it stands in the section "Event
-- loops", run as a script of its own.
describe("the README's cqueues example", function()
  -- the ```lua block of README.md's section 'title' that contains 'needle'
  local function example(title, needle)
    local readme = assert(poll.read("README.md"))
    local from = assert(readme:find("\n### " .. title .. "\n", 1, true), "no section " .. title)
    local upto = readme:find("\n##", from + 1, true) or #readme
    local section = readme:sub(from, upto)
    for block in section:gmatch("```lua\n(.-)```") do
      if block:find(needle, 1, true) then return block end
    end
    error("no ```lua block with " .. needle .. " in the section " .. title)
  end

  it("runs: the steps in order, then done, and the controller's three lines (subprocess)", function()
    local path = os.tmpname()
    poll.touch(path, example("Event loops", 'require "cqueues"'))
    local r = sub.run(path, {}, {timeout = 30})
    os.remove(path)
    assert.equal(0, r.code, r.report)
    local mine, controller = {}, 0
    for line in r.stdout:gmatch("[^\n]+") do
      if line == "the controller runs" then controller = controller + 1
      else mine[#mine + 1] = line end
    end
    assert.same({"step\t1", "step\t2", "step\t3", "done"}, mine, r.report)
    assert.equal(3, controller, r.report)
  end)
end)
