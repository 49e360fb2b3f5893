local isolate = require "isolate"

-- The outcome of isolate.run(f, ...): "ok", results... or "error", kind, message.
local function outcome(f, ...)
  local r = table.pack(pcall(isolate.run, f, ...))
  if r[1] then return "ok", table.unpack(r, 2, r.n) end
  local e = r[2]
  if getmetatable(e) == isolate.RemoteError then return "error", e.kind, e.message end
  return "error", "local", e
end

-- A file the isolate writes and the spec reads back.
local function marker()
  local path = os.tmpname()
  os.remove(path)
  return path, function()
    local f = io.open(path)
    local s = f and f:read("a")
    if f then f:close() end
    os.remove(path)
    return s
  end
end

describe("exits", function()
  it("never touch results being encoded: a finalizer's exit during encoding wins whole", function()
    for _ = 1, 100 do
      local ok, r = pcall(isolate.run, function()
        for _ = 1, 500 do setmetatable({}, {__gc = function() isolate.exit("from __gc") end}) end
        local big = {}
        for i = 1, 2000 do big[i] = {i, tostring(i)} end
        return big
      end)
      assert.is_true(ok, tostring(r))
      if type(r) == "table" then
        assert.equal(2000, #r)
        assert.same({2000, "2000"}, r[2000])
      else
        assert.equal("from __gc", r)
      end
    end
  end)

  it("with results that cannot travel are a plain error, which pcall catches, and leave nothing behind", function()
    assert.same({"ok", "ok"}, {outcome(function()
      pcall(isolate.exit, {1, 2, coroutine.create(print)})
      return "ok"
    end)})
    local status, kind, message = outcome(function() isolate.exit(1, {co = coroutine.create(print)}) end)
    assert.same({"error", "error", "isolate: cannot transfer a thread (result #2 > field 'co')"}, {status, kind, message})
    -- an exit after a failed one still works
    assert.same({"ok", "second"}, {outcome(function()
      pcall(isolate.exit, coroutine.create(print))
      isolate.exit("second")
    end)})
  end)

  it("end the isolate even when asked where Lua cannot unwind", function()
    -- a load reader
    assert.same({"error", "exit", "Computation ended without result"},
      {outcome(function() load(function() os.exit() end); while true do end end)})
    assert.same({"ok", "via load"},
      {outcome(function() load(function() isolate.exit("via load") end); while true do end end)})
    -- a __close that coroutine.close runs
    assert.same({"ok", "via close"}, {outcome(function()
      local co = coroutine.create(function()
        local _ <close> = setmetatable({}, {__close = function() isolate.exit("via close") end})
        coroutine.yield()
      end)
      coroutine.resume(co)
      coroutine.close(co)
      while true do end
    end)})
    -- a finalizer, during an explicit collection or any allocation
    assert.same({"ok", "via gc"}, {outcome(function()
      setmetatable({}, {__gc = function() isolate.exit("via gc") end})
      collectgarbage()
      while true do end
    end)})
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      setmetatable({}, {__gc = function() os.exit() end})
      local t = {}
      for i = 1, 1e7 do t[i % 1000 + 1] = {i} end
      return "not reached"
    end)})
    -- from inside a coroutine's finalizer
    assert.same({"ok", "in co"}, {outcome(function()
      local co = coroutine.wrap(function()
        setmetatable({}, {__gc = function() isolate.exit("in co") end})
        collectgarbage()
        while true do end
      end)
      co()
    end)})
  end)

  it("end the isolate when a finalizer's exit is swallowed wherever the finalizer runs", function()
    local ended = {"error", "exit", "Computation ended without result"}
    -- in a coroutine whose body is a C function: no Lua runs there after it
    assert.same(ended, {outcome(function()
      setmetatable({}, {__gc = function() os.exit() end})
      coroutine.wrap(collectgarbage)()
      while true do end
    end)})
    -- deep in calls made by the finalizer
    assert.same(ended, {outcome(function()
      local function deep(n) if n == 0 then os.exit() end local r = deep(n - 1) return r end
      setmetatable({}, {__gc = function() deep(2000) end})
      collectgarbage()
      while true do end
    end)})
    -- in a coroutine that the finalizer runs
    assert.same(ended, {outcome(function()
      setmetatable({}, {__gc = function() coroutine.wrap(function() os.exit() end)() end})
      collectgarbage()
      while true do end
    end)})
    -- in a coroutine run by coroutine.resume, handing back to its resumer
    assert.same({"ok", "in resume"}, {outcome(function()
      local co = coroutine.create(function()
        setmetatable({}, {__gc = function() isolate.exit("in resume") end})
        collectgarbage()
        coroutine.yield()
      end)
      coroutine.resume(co)
      while true do end
    end)})
  end)

  it("end the isolate when a finalizer's exit is swallowed and a third coroutine runs on", function()
    local ended = {"error", "exit", "Computation ended without result"}
    assert.same(ended, {outcome(function()
      coroutine.wrap(function()
        setmetatable({}, {__gc = function() coroutine.wrap(function() os.exit() end)() end})
        collectgarbage()
        while true do end
      end)()
    end)})
    assert.same(ended, {outcome(function()
      coroutine.wrap(function()
        setmetatable({}, {__gc = function() os.exit() end})
        coroutine.wrap(collectgarbage)()
        while true do end
      end)()
    end)})
  end)

  it("let cleanup run to its end when unrelated finalizers fail or exit meanwhile", function()
    for _, raise in ipairs{function() error("buggy finalizer") end, function() error({}) end, os.exit} do
      local path, read = marker()
      assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
        local _ <close> = setmetatable({}, {__close = function()
          for _ = 1, 10 do setmetatable({}, {__gc = raise}) end
          pcall(collectgarbage)
          local f = io.open(path, "w"); f:write("cleanup finished"); f:close()
        end})
        os.exit()
      end)})
      assert.equal("cleanup finished", read())
    end
  end)

  it("let a coroutine that cleanup resumes catch its own errors, whatever it was doing before", function()
    local path, read = marker()
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      local co = coroutine.create(function()
        while true do
          local _, e = pcall(function()
            if coroutine.yield("ready") == "fail" then error("ordinary", 0) end
          end)
          coroutine.yield("caught " .. tostring(e))
        end
      end)
      coroutine.resume(co)		-- suspended inside its pcall
      local _ <close> = setmetatable({}, {__close = function()
        local ok, r = coroutine.resume(co, "fail")
        local f = io.open(path, "w"); f:write(tostring(ok), " ", tostring(r)); f:close()
      end})
      os.exit()
    end)})
    assert.equal("true caught ordinary", read())
  end)


  it("end the isolate from a finalizer whatever error value the GC sees at last", function()
    local ended = {"error", "exit", "Computation ended without result"}
    -- a message handler that would turn the exit into a string
    assert.same(ended, {outcome(function()
      setmetatable({}, {__gc = function() xpcall(os.exit, function() return "handled" end) end})
      collectgarbage()
      while true do end
    end)})
    -- a __close that raises a string while the exit unwinds the finalizer
    assert.same(ended, {outcome(function()
      setmetatable({}, {__gc = function()
        local _ <close> = setmetatable({}, {__close = function() error("cleanup failed") end})
        os.exit()
      end})
      collectgarbage()
      while true do end
    end)})
    -- a handler that itself exits
    assert.same(ended, {outcome(function()
      setmetatable({}, {__gc = function() xpcall(error, os.exit) end})
      collectgarbage()
      while true do end
    end)})
  end)

  it("pass xpcall message handlers by: no handler sees an exit", function()
    local path, read = marker()
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      local calls = 0
      xpcall(function() error("x") end, function(e)
        calls = calls + 1
        local f = io.open(path, "w"); f:write(calls); f:close()
        load(function() os.exit() end)
      end)
      return "not reached"
    end)})
    assert.equal("1", read())
  end)

  it("leave pcall working as usual afterwards: nothing re-raises ordinary errors", function()
    -- a finalizer's exit is pending; the exit, not a changed pcall, is what ends it
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      setmetatable({}, {__gc = function() os.exit() end})
      collectgarbage()
      local ok = pcall(error, "x")
      return ok
    end)})
    -- without any exit, pcall catches whatever happens in finalizers and loaders
    assert.same({"ok", false, "x", nil}, {outcome(function()
      local r = table.pack(pcall(error, "x", 0))
      local f = load(function() return nil end)
      return r[1], r[2], f == nil and nil or nil
    end)})
  end)

  it("let cleanup code protect itself: pcall in a __close handler catches while the exit unwinds", function()
    local path, read = marker()
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      local _ <close> = setmetatable({}, {__close = function()
        local ok, e = pcall(error, "inner", 0)
        local ok2 = xpcall(error, function(m) return m end, "again")
        local f = io.open(path, "w"); f:write(tostring(ok), " ", e, " ", tostring(ok2), " done"); f:close()
      end})
      pcall(os.exit)
    end)})
    assert.equal("false inner false done", read())
  end)

  it("are not caught by the pcalls that were running when they began, at any depth", function()
    local path, read = marker()
    assert.same({"ok", "out"}, {outcome(function()
      local function deep(n)
        if n == 0 then isolate.exit("out") end
        local ok, e = pcall(deep, n - 1)
        local f = io.open(path, "w"); f:write("caught ", tostring(e)); f:close()
        return ok
      end
      deep(50)
      return "not this"
    end)})
    assert.is_nil(read())
  end)

  it("close what a coroutine run by coroutine.resume left open", function()
    local path, read = marker()
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      local co = coroutine.create(function()
        local _ <close> = setmetatable({}, {__close = function()
          local f = io.open(path, "w"); f:write("closed"); f:close()
        end})
        os.exit()
      end)
      coroutine.resume(co)
      return "not reached"
    end)})
    assert.equal("closed", read())
    -- nested coroutines, each with its own variable
    path, read = marker()
    assert.same({"ok", 3}, {outcome(function()
      local closed = 0
      local function note() closed = closed + 1; local f = io.open(path, "w"); f:write(closed); f:close() end
      local function level(n)
        local _ <close> = setmetatable({}, {__close = note})
        if n == 0 then isolate.exit(3) end
        local co = coroutine.create(level)
        coroutine.resume(co, n - 1)
      end
      level(2)
    end)})
    assert.equal("3", read())
  end)

  it("keep a coroutine they leave through coroutine.resume alive while it closes", function()
    for _ = 1, 20 do
      assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
        coroutine.resume(coroutine.create(function()
          local _ <close> = setmetatable({}, {__close = function()
            coroutine.wrap(function() collectgarbage() collectgarbage() end)()
            local t = {}
            for i = 1, 1000 do t[i] = {i} end
          end})
          os.exit()
        end))
        return "not reached"
      end)})
    end
  end)

  it("work when user code has emptied the registry with the debug library", function()
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      local reg = debug.getregistry()
      for k in pairs(reg) do
        if type(k) ~= "number" then reg[k] = nil end
      end
      os.exit()
    end)})
    assert.same({"ok", "still"}, {outcome(function()
      local reg = debug.getregistry()
      for k in pairs(reg) do
        if type(k) ~= "number" then reg[k] = nil end
      end
      local ok = pcall(error, "x")
      isolate.exit(not ok and "still")
    end)})
  end)

  it("from a finalizer while the state closes change nothing", function()
    assert.same({"ok", "result"}, {outcome(function()
      setmetatable({}, {__gc = function() isolate.exit("from __gc") end})
      return "result"
    end)})
    assert.same({"error", "exit", "Computation ended without result"}, {outcome(function()
      setmetatable({}, {__gc = function() isolate.exit("from __gc") end})
      os.exit()
    end)})
  end)
end)

describe("coroutine.close and load inside an isolate", function()
  it("behave as the library's own", function()
    local r = table.pack(isolate.run(function()
      local co = coroutine.running()
      local ok1, e1 = pcall(function() return coroutine.close(co) end)
      local f, e2 = load(42)
      local fresh = coroutine.create(function() end)
      local failed = coroutine.create(function() error("x", 0) end)
      coroutine.resume(failed)
      local c1 = coroutine.close(fresh)
      local c2, e3 = coroutine.close(failed)
      return ok1, e1, f, e2, c1, c2, e3
    end))
    assert.is_false(r[1])
    assert.matches("^spec/exit_spec.lua:%d+: cannot close a running coroutine$", r[2])
    assert.is_nil(r[3])
    assert.matches('^%[string "42"%]:1:', r[4])
    assert.same({true, false, "x"}, {r[5], r[6], r[7]})
  end)

  it("finish what a coroutine left open when its __close yields while an exit unwinds it", function()
    local path = os.tmpname()
    local outcome = {pcall(isolate.run, function()
      local co = coroutine.wrap(function()
        local _ <close> = setmetatable({}, {__close = function()
          local f = io.open(path, "a"); f:write("outer ran\n"); f:close()
        end})
        local _ <close> = setmetatable({}, {__close = function() coroutine.yield() end})
        pcall(os.exit)
      end)
      co()
      return "not reached"
    end)}
    local f = io.open(path); local log = f:read("a"); f:close(); os.remove(path)
    assert.is_false(outcome[1])
    assert.equal("exit", outcome[2].kind)
    assert.equal("outer ran\n", log)
  end)
end)

describe("coroutine.close inside an isolate", function()
  it("raises an error, not a crash, when coroutines close each other past the C stack", function()
    local ok, closed, err = isolate.run(function()
      local prev
      for _ = 1, 20000 do
        local p = prev
        local co = coroutine.create(function()
          local _ <close> = setmetatable({}, {__close = function()
            local ok, e = true, nil
            if p then ok, e = coroutine.close(p) end
            if not ok then error(e, 0) end
          end})
          coroutine.yield()
        end)
        coroutine.resume(co)
        prev = co
      end
      return pcall(coroutine.close, prev)
    end)
    assert.is_true(ok)
    assert.is_false(closed)
    assert.is_not_nil(tostring(err):find("C stack overflow (coroutines closing each other)", 1, true))
  end)
end)
