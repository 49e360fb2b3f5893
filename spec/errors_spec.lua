local isolate = require "isolate"

-- The error that f raises, which must be one.
local function error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("errors", function()
  describe("raised in an isolate", function()
    it("come back as an isolate.RemoteError with kind, message and traceback", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local err = error_of(isolate.run, function() error("boom") end)
      assert.equal(isolate.RemoteError, getmetatable(err))
      assert.equal("error", err.kind)
      assert.equal("spec/errors_spec.lua:" .. line .. ": boom", err.message)
      assert.equal("spec/errors_spec.lua:" .. line .. ": boom", err.value)
      assert.matches("^stack traceback:", err.traceback)
      assert.matches("spec/errors_spec.lua:" .. line .. ": in function", err.traceback)
      assert.not_matches("%[C%]: in %?$", err.traceback)   -- the core's own entry is cut
    end)

    it("print the message, then the remote traceback, then the caller's", function()
      local err = error_of(isolate.run, function() error("boom") end)
      assert.equal(err.message .. "\nremote " .. err.traceback .. "\ncaller's " .. err.caller, tostring(err))
      err.caller = nil
      assert.equal(err.message .. "\nremote " .. err.traceback, tostring(err))
    end)

    it("keep the remote stack of nested calls", function()
      local function inner() error("deep") end
      local function outer() inner() end
      local err = error_of(isolate.run, function() outer() end)
      assert.matches("in upvalue 'inner'", err.traceback)
      assert.matches("in upvalue 'outer'", err.traceback)
    end)

    it("carry a table error value with its fields and metatable", function()
      local err = error_of(isolate.run, function() error({code = 42}) end)
      assert.equal(42, err.value.code)
      assert.equal("(error object is a table value)", err.message)
      err = error_of(isolate.run, function()
        error(setmetatable({code = 7}, {__tostring = function(e) return "E" .. e.code end}))
      end)
      assert.equal("E7", err.message)
      assert.equal("E7", tostring(err.value))
    end)

    it("drop a value that cannot travel and keep the rest", function()
      local err = error_of(isolate.run, function()
        error(setmetatable({co = coroutine.create(print)}, {__tostring = function() return "no way" end}))
      end)
      assert.equal("error", err.kind)
      assert.equal("no way", err.message)
      assert.is_nil(err.value)
    end)

    it("name a result that cannot travel", function()
      local err = error_of(isolate.run, function() return 1, {co = coroutine.create(print)} end)
      assert.equal("error", err.kind)
      assert.equal("isolate: cannot transfer a thread (result #2 > field 'co')", err.message)
    end)

    it("report a module that cannot be required inside", function()
      package.loaded["made.up.module"] = {}
      local m = package.loaded["made.up.module"]
      local err = error_of(isolate.run, function() return m end)
      package.loaded["made.up.module"] = nil
      assert.equal("error", err.kind)
      assert.matches("module 'made.up.module' not found", err.message)
    end)
  end)

  describe("for what cannot travel", function()
    it("is a plain error naming the type and the path, before any isolate starts", function()
      local marker = os.tmpname()
      os.remove(marker)
      local co = coroutine.create(print)
      local err = error_of(isolate.run, function()
        io.open(marker, "w"):close()
      end, 1, {co = co})
      assert.equal("isolate: cannot transfer a thread (argument #3 > field 'co')", err)
      assert.is_nil(io.open(marker), "the isolate ran")
    end)

    it("names the upvalue and its function", function()
      local f = io.tmpfile()
      local line = debug.getinfo(1, "l").currentline + 1
      local err = error_of(isolate.run, function() return f end)
      assert.equal("isolate: cannot transfer a userdata (FILE*) (upvalue 'f' of function <spec/errors_spec.lua:"
        .. line .. ">)", err)
    end)

    it("names paths through nested functions, indexes and metatables", function()
      local co = coroutine.create(print)
      local t = {1, 2, {x = co}}
      local function helper() return t end
      local err = error_of(isolate.run, function() return helper() end)
      assert.matches("^isolate: cannot transfer a thread %(upvalue 'helper' of function <.->"
        .. " > upvalue 't' of function <.-> > %[3%] > field 'x'%)$", err)
      err = error_of(isolate.spawn, function() end, setmetatable({}, {__index = co}))
      assert.equal("isolate: cannot transfer a thread (argument #2 > metatable > field '__index')", err)
      err = error_of(isolate.run, function() end, {[co] = true})
      assert.equal("isolate: cannot transfer a thread (argument #2 > key)", err)
    end)

    it("refuses C closures with upvalues", function()
      local gen = coroutine.wrap(function() end)
      local err = error_of(isolate.run, function() return gen end)
      assert.matches("^isolate: cannot transfer a C function with upvalues %(upvalue 'gen'", err)
    end)

    it("refuses values nested too deeply", function()
      local t = {}
      for _ = 1, 300 do t = {t} end
      local err = error_of(isolate.run, function() return t end)
      assert.matches("^isolate: value nested too deeply", err)
    end)
  end)

  it("gives Lua's usual message for a non-function", function()
    assert.has_error(function() isolate.run(nil) end, "bad argument #1 to 'run' (function expected, got nil)")
    assert.has_error(function() isolate.spawn(42) end, "bad argument #1 to 'spawn' (function expected, got number)")
  end)
end)

describe("inside an isolate", function()
  it("os.exit ends the isolate only", function()
    local err = error_of(isolate.run, function() os.exit(0) end)
    assert.equal(isolate.RemoteError, getmetatable(err))
    assert.equal("exit", err.kind)
    assert.equal("Computation ended without result", err.message)
  end)

  it("os.exit cannot be caught by pcall", function()
    local err = error_of(isolate.run, function()
      pcall(os.exit, 1)
      return "survived"
    end)
    assert.equal("exit", err.kind)
  end)

  it("os.exit closes to-be-closed variables on the way out", function()
    local marker = os.tmpname()
    local err = error_of(isolate.run, function()
      local _ <close> = setmetatable({}, {__close = function()
        local f = io.open(marker, "w"); f:write("closed"); f:close()
      end})
      pcall(os.exit)
    end)
    assert.equal("exit", err.kind)
    local f = io.open(marker)
    local content = f:read("a")
    f:close()
    os.remove(marker)
    assert.equal("closed", content)
  end)

  it("isolate.exit ends the computation with these results", function()
    local r = table.pack(isolate.run(function()
      isolate.exit(1, nil, "three")
      error("not reached")
    end))
    assert.same({n = 3, 1, nil, "three"}, r)
  end)

  it("isolate.exit works from inside a coroutine and through pcall", function()
    assert.equal("out", isolate.run(function()
      local co = coroutine.wrap(function() pcall(isolate.exit, "out") end)
      co()
      return "not this"
    end))
    assert.equal("out", isolate.run(function()
      local co = coroutine.create(function() xpcall(isolate.exit, tostring, "out") end)
      coroutine.resume(co)
      return "not this"
    end))
  end)

  it("pcall, xpcall and coroutines still work as usual", function()
    assert.same({false, "x", true, 1, 2, "handled: y", 3}, {isolate.run(function()
      local ok, e = pcall(error, "x", 0)
      local ok2, a, b = pcall(function(...) return ... end, 1, 2)
      local _, h = xpcall(error, function(m) return "handled: " .. m end, "y", 0)
      local co = coroutine.create(function() local v = coroutine.yield(1); return v + 1 end)
      coroutine.resume(co)
      local _, three = coroutine.resume(co, 2)
      return ok, e, ok2, a, b, h, three
    end)})
    -- a yield across the isolate's pcall
    assert.equal(5, isolate.run(function()
      local co = coroutine.wrap(function() return select(2, pcall(function() return coroutine.yield(4) + 1 end)) end)
      co()
      return co(4)
    end))
  end)

  it("isolate.exit with a value that cannot travel is an error", function()
    local err = error_of(isolate.run, function() isolate.exit(coroutine.create(print)) end)
    assert.equal("error", err.kind)
    assert.equal("isolate: cannot transfer a thread (result #1)", err.message)
  end)

  it("exits called by finalizers while the state closes change nothing", function()
    local r = table.pack(isolate.run(function()
      setmetatable({}, {__gc = function() isolate.exit("from __gc") end})
      return "result"
    end))
    assert.same({n = 1, "result"}, r)
    -- after an exit, a finalizer's pcall still catches its own errors
    local marker = os.tmpname()
    r = table.pack(isolate.run(function()
      setmetatable({}, {__gc = function()
        local ok = pcall(error, "caught")
        local f = io.open(marker, "w"); f:write(tostring(ok)); f:close()
      end})
      isolate.exit("early")
    end))
    -- (the state closes after its results are handed over: wait for it)
    local content, deadline = "", os.time() + 10
    repeat
      local f = io.open(marker)
      content = f:read("a")
      f:close()
    until content ~= "" or os.time() > deadline
    os.remove(marker)
    assert.same({n = 1, "early"}, r)
    assert.equal("false", content)
    local err = error_of(isolate.run, function()
      setmetatable({}, {__gc = function() isolate.exit("from __gc") end})
      error("failed")
    end)
    assert.equal("error", err.kind)
    assert.matches("failed$", err.message)
  end)

  it("isolate.exit outside an isolate is an error", function()
    assert.has_error(function() isolate.exit(1) end, "isolate.exit called outside an isolate")
  end)

  it("isolate.ismain tells where the code runs", function()
    assert.is_true(isolate.ismain())
    assert.is_false(isolate.run(function() return isolate.ismain() end))
  end)

  it("isolate.name is nil outside an isolate and in the default pool", function()
    assert.is_nil(isolate.name())
    assert.equal(0, select("#", isolate.run(function() end)))
    local n, name = isolate.run(function() return select("#", isolate.name()), isolate.name() end)
    assert.equal(1, n)
    assert.is_nil(name)
  end)

  it("names its worker threads", function()
    local names = isolate.spawn(function()
      local f = io.open("/proc/thread-self/comm")
      if not f then return nil end
      local name = f:read("l")
      f:close()
      return name
    end):await()
    if names then assert.matches("^isolate/%d+$", names) end
  end)
end)

describe("errors that cross nested isolates", function()
  it("keep their kind, message, traceback and value: the RemoteError travels by name", function()
    local err = error_of(isolate.run, function()
      return isolate.run(function() error({code = 7}) end)
    end)
    assert.equal("error", err.kind)
    assert.equal("(error object is a table value)", err.message)
    local inner = err.value
    assert.equal(isolate.RemoteError, getmetatable(inner))
    assert.equal("error", inner.kind)
    assert.equal(7, inner.value.code)
    assert.matches("^stack traceback:", inner.traceback)
    -- an exit and a memory-free kind travel the same way
    err = error_of(isolate.run, function() return isolate.run(function() os.exit() end) end)
    assert.equal("exit", err.value.kind)
    -- the RemoteError metatable itself travels by name
    assert.equal(isolate.RemoteError, isolate.run(function() return isolate.RemoteError end))
  end)

  it("lose only the value when it names a module that only the isolate has", function()
    local err = error_of(isolate.run, function()
      package.loaded["only.here"] = {}
      local m = package.loaded["only.here"]
      error(setmetatable({m = m}, {__tostring = function() return "custom" end}))
    end)
    assert.equal("error", err.kind)
    assert.equal("custom", err.message)
    assert.is_nil(err.value)
    assert.matches("^stack traceback:", err.traceback)
  end)

  it("keep the traceback when the value's __tostring fails", function()
    local err = error_of(isolate.run, function()
      error(setmetatable({}, {__tostring = function() error("bad tostring") end}))
    end)
    assert.equal("error", err.kind)
    assert.equal("(error object is a table value whose __tostring failed)", err.message)
    assert.matches("^stack traceback:", err.traceback)
    err = error_of(isolate.run, function()
      error(setmetatable({}, {__tostring = function() return {} end}))
    end)
    assert.equal("(error object is a table value whose __tostring failed)", err.message)
  end)

  it("report running out of memory while encoding results as kind 'memory'", function()
    local core = require "isolate.core"
    -- the first allocation past the start of the job that fails is the
    -- encoder's: a large string's copy, or the result buffer
    local seen = {}
    for n = 1, 400 do
      core._failalloc(n)
      local ok, err = pcall(isolate.run, function() return ("x"):rep(100), {1, 2, 3} end)
      if not ok then
        assert.equal(isolate.RemoteError, getmetatable(err))
        assert.equal("memory", err.kind, err.message)
        assert.equal("not enough memory", err.message)
        seen[#seen + 1] = n
      end
    end
    core._failalloc(0)
    assert.is_true(#seen > 0, "no allocation failed")
    assert.equal(1, isolate.run(function() return 1 end))
  end)
end)
