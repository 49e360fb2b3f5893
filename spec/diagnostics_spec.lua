-- Diagnostics: isolate.captures (what a closure carries, without running
-- anything), the hint for a global that does not travel, and errors that
-- are easy to use (__concat, the caller's traceback).
local isolate = require "isolate"
local sub = dofile("spec/subprocess.lua")

-- The real globals table: busted runs a spec file in an environment of
-- its own; a function defined here has that environment as its _ENV.
local G = debug.getregistry()[2]

local HEADER = #isolate.encode()

-- the size of v's message, without its header
local function size(v) return #isolate.encode(v) - HEADER end

-- the entries of captures(fn) by path
local function bypath(fn)
  local t = {}
  for _, e in ipairs(isolate.captures(fn)) do
    assert.is_nil(t[e.path], "one entry per path: " .. e.path)
    t[e.path] = e
  end
  return t
end

-- the RemoteError that f(...) raises
local function remote(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  assert.equal(isolate.RemoteError, getmetatable(err))
  return err
end

-- a script in a file of its own, run by this run's interpreter
local function script(text)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(text)
  f:close()
  return name
end

describe("isolate.captures(fn)", function()
  it("lists each upvalue with its path, type and encoded size", function()
    local cfg = {names = {"a", "b"}, limit = 10}
    local n, s = 42, "text"
    local list = isolate.captures(function() return cfg.limit, n, s end)
    assert.same({
      {path = "upvalue 'cfg'", type = "table", bytes = size(cfg), ok = true},
      {path = "upvalue 'cfg' > field 'names'", type = "table", bytes = size(cfg.names), ok = true},
      {path = "upvalue 'n'", type = "number", bytes = size(n), ok = true},
      {path = "upvalue 's'", type = "string", bytes = size(s), ok = true},
    }, list)
  end)

  it("gives an empty list for a function that carries nothing, and for a C function bound by name", function()
    assert.same({}, isolate.captures(function(a) return a + 1 end))
    assert.same({}, isolate.captures(string.rep))
  end)

  it("goes through the upvalues of the functions it carries, and through their tables", function()
    local scale = 3
    local rows = {{1}, {2}}
    local function helper(x) return x * scale + #rows end
    local e = bypath(function() return helper(2) end)
    assert.equal("function", e["upvalue 'helper'"].type)
    assert.equal(size(helper), e["upvalue 'helper'"].bytes)
    assert.same({path = "upvalue 'helper' > upvalue 'scale'", type = "number", bytes = size(3), ok = true},
      e["upvalue 'helper' > upvalue 'scale'"])
    assert.equal(size(rows), e["upvalue 'helper' > upvalue 'rows'"].bytes)
    assert.equal(size(rows[2]), e["upvalue 'helper' > upvalue 'rows' > [2]"].bytes)
  end)

  it("names what cannot travel, and why, in the entry and in those around it", function()
    local co = coroutine.create(print)
    local cfg = {inner = {co}, f = io.open("/dev/null")}
    local e = bypath(function() return cfg end)
    assert.same({path = "upvalue 'cfg' > field 'inner' > [1]", type = "thread", ok = false,
                 why = "cannot transfer a thread"}, e["upvalue 'cfg' > field 'inner' > [1]"])
    assert.same({path = "upvalue 'cfg' > field 'inner'", type = "table", ok = false,
                 why = "cannot transfer a thread (at [1])"}, e["upvalue 'cfg' > field 'inner'"])
    assert.is_false(e["upvalue 'cfg'"].ok)
    assert.is_nil(e["upvalue 'cfg'"].bytes)
    assert.equal("cannot transfer a userdata (FILE*)", e["upvalue 'cfg' > field 'f'"].why)
    cfg.f:close()
    -- a C function that is no field of a loaded module
    local list = isolate.captures(coroutine.wrap(print))
    assert.same({{path = "function", type = "function", ok = false,
                  why = "cannot transfer a C function with upvalues"}}, list)
  end)

  it("runs nothing: no __isolate is called, and an object's entry says how it travels", function()
    local calls = 0
    local obj = setmetatable({secret = {1, 2, 3}}, {__isolate = function() calls = calls + 1 return print end})
    local holder = {obj = obj}
    local e = bypath(function() return holder end)
    assert.equal(0, calls)
    assert.same({path = "upvalue 'holder' > field 'obj'", type = "table", ok = true, by = "__isolate"},
      e["upvalue 'holder' > field 'obj'"])
    assert.is_nil(e["upvalue 'holder' > field 'obj' > field 'secret'"])
    assert.is_true(e["upvalue 'holder'"].ok)
    local bad = setmetatable({}, {__isolate = "not a function"})
    assert.same({{path = "upvalue 'bad'", type = "table", ok = false, by = "__isolate",
                  why = "its __isolate is a string, which cannot be called"}},
      isolate.captures(function() return bad end))
  end)

  it("shows tables bound by name (modules, the globals table) without looking inside", function()
    -- (a function with the real globals as its _ENV: busted's is its own)
    local e = bypath(load("local json_like = ... return function() return json_like.rep, print end",
      "=chunk", "t", G)(package.loaded.string))
    assert.same({path = "upvalue 'json_like'", type = "table", bytes = size(string), ok = true,
                 by = "name 'string'"}, e["upvalue 'json_like'"])
    assert.same({path = "upvalue '_ENV'", type = "table", ok = true, bytes = 1, by = "globals"}, e["upvalue '_ENV'"])
    local n = 0
    for _ in pairs(e) do n = n + 1 end
    assert.equal(2, n)
  end)

  it("lists a value referenced twice once, and follows cycles", function()
    local shared = {1, 2}
    local a = {x = shared, y = shared}
    a.self = a
    local list = isolate.captures(function() return a, shared end)
    local paths = {}
    for _, e in ipairs(list) do paths[#paths + 1] = e.path end
    table.sort(paths)
    assert.equal(2, #paths)
    assert.equal("upvalue 'a'", paths[1])
    assert.matches("^upvalue 'a' > field '[xy]'$", paths[2])
  end)

  it("lists only what fails inside a table that holds more than 32 tables", function()
    local big = {}
    for i = 1, 1000 do big[i] = {id = i} end
    assert.equal(1, #isolate.captures(function() return big end))
    big[500] = coroutine.create(print)
    local list = isolate.captures(function() return big end)
    assert.equal(2, #list)
    assert.equal("cannot transfer a thread (at [500])", list[1].why)
    assert.same({path = "upvalue 'big' > [500]", type = "thread", ok = false, why = "cannot transfer a thread"}, list[2])
  end)

  it("shows the cost of capturing a table rather than its field", function()
    local db = {names = {"a", "b"}}
    for i = 1, 10000 do db[i] = string.rep("x", 100) end
    local names = db.names
    local whole = isolate.captures(function() return #db.names end)[1]
    local field = isolate.captures(function() return #names end)[1]
    assert.is_true(whole.bytes > 1000000)
    assert.is_true(field.bytes < 20)
  end)

  it("names key and metatable steps as the encoder does", function()
    local k = {}
    local mt = {__index = {}}
    local t = setmetatable({[k] = true}, mt)
    local e = bypath(function() return t end)
    assert.is_not_nil(e["upvalue 't' > key #1"])
    assert.is_not_nil(e["upvalue 't' > metatable"])
    assert.is_not_nil(e["upvalue 't' > metatable > field '__index'"])
  end)

  it("wants a function", function()
    assert.has_error(function() isolate.captures(3) end,
      "bad argument #1 to 'captures' (function expected, got number)")
    assert.has_error(function() isolate.captures() end,
      "bad argument #1 to 'captures' (function expected, got no value)")
  end)
end)

describe("a global that is nil in the isolate", function()
  after_each(function() G.square, G.cfg = nil, nil end)

  it("set in the caller: the message ends with a hint naming it", function()
    G.square = function(x) return x * x end
    local err = remote(isolate.run, function() return square(2) end)
    assert.matches("attempt to call a nil value %(global 'square'%)\nhint: 'square' is a global in the caller, "
      .. "but globals do not travel: capture it as a local upvalue %(local square = square, above the function%)$",
      err.message)
    G.cfg = {}
    err = remote(isolate.run, function() return cfg.x end)
    assert.matches("%(global 'cfg'%)\nhint: 'cfg' is a global in the caller", err.message)
  end)

  it("not set in the caller: no hint", function()
    local err = remote(isolate.run, function() return square(2) end)
    assert.matches("attempt to call a nil value %(global 'square'%)$", err.message)
  end)

  it("set in an environment that falls back on another table through __index: the hint", function()
    local env = setmetatable({}, {__index = {square = print}})
    local f = load("local isolate = ... return isolate.run(function() return square(2) end)", "=chunk", "t", env)
    local ok, err = pcall(f, isolate)
    assert.is_false(ok)
    assert.matches("\nhint: 'square' is a global in the caller", err.message)
  end)

  it("gives one hint when the error comes back through a nested isolate", function()
    G.square = print
    local err = remote(isolate.run, function()
      local isolate = require "isolate"
      square = print              -- set there too: the inner error gets its hint
      return isolate.run(function() return square(2) end)
    end)
    local _, count = err.message:gsub("\nhint: ", "")
    assert.equal(1, count)
  end)

  it("a local or a field that is nil gets no hint", function()
    G.square = print
    local err = remote(isolate.run, function() local square; return square(2) end)
    assert.not_matches("hint", err.message)
    err = remote(isolate.run, function() local t = {} return t.square(2) end)
    assert.not_matches("hint", err.message)
  end)

  it("the hint shows in an uncaught error of a script", function()
    local name = script([[
local isolate = require "isolate"
function square(x) return x * x end
print(isolate.run(function() return square(3) end))
]])
    local r = sub.run(name)
    os.remove(name)
    assert.equal(1, r.code, r.report)
    assert.matches("hint: 'square' is a global in the caller", r.stderr, 1, true)
  end)
end)

describe("a RemoteError", function()
  it("concatenates as its tostring, on either side", function()
    local err = remote(isolate.run, function() error("boom") end)
    assert.equal("failed: " .. tostring(err), "failed: " .. err)
    assert.equal(tostring(err) .. "!", err .. "!")
    assert.equal(tostring(err) .. tostring(err), err .. err)
    assert.equal("1" .. tostring(err), 1 .. err)
    local task = isolate.spawn(function() local t0 = os.time() repeat until os.time() > t0 + 2 end)
    local ok, timeout = pcall(task.await, task, 0)
    assert.is_false(ok)
    assert.equal("late: " .. tostring(timeout), "late: " .. timeout)
    task:cancel()
  end)

  it("holds where the caller raised it: 'caller', a traceback from the call of run", function()
    local function here() local r = isolate.run(function() error("boom") end) return r end
    local err = remote(here)
    assert.matches("^stack traceback:\n", err.caller)
    assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. debug.getinfo(here).linedefined .. ": in ", err.caller)
    assert.matches("\ncaller's stack traceback:\n", tostring(err), 1, true)
    assert.matches("remote stack traceback:.*caller's stack traceback:", tostring(err))
  end)

  it("of await holds where await was called, each time it is raised", function()
    local task = isolate.spawn(function() error("boom") end)
    local function first() local r = task:await() return r end
    local function second() local r = task:await() return r end
    local err = remote(first)
    assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. debug.getinfo(first).linedefined .. ": in ", err.caller)
    err = remote(second)
    assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. debug.getinfo(second).linedefined .. ": in ", err.caller)
  end)

  it("of map holds where map was called", function()
    local function mapper()
      local r = isolate.map(function(x) if x == 3 then error("three") end return x end, {1, 2, 3})
      return r
    end
    local err = remote(mapper)
    assert.equal(3, err.index)
    assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. (debug.getinfo(mapper).linedefined + 1) .. ": in ", err.caller)
    assert.not_matches("isolate/init.lua", err.caller)
  end)

  it("of isolate.all and of the adapters' await holds the user's line first", function()
    local task = isolate.spawn(function() error("boom") end)
    local function viaall() local r = isolate.all({task}) return r end
    local err = remote(viaall)
    assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. debug.getinfo(viaall).linedefined .. ": in ", err.caller)
    for _, name in ipairs({"isolate.luv", "isolate.cqueues"}) do
      local ok, adapter = pcall(require, name)
      -- luv frees its loop with its first module table, yet a second
      -- require in the same state uses that loop (a crash in
      -- uv_timer_init): busted unloads what this file required when it
      -- ends, and spec/luv_spec.lua requires luv again.  So that first
      -- table stays referenced for good.
      debug.getregistry()["isolate spec: the first luv"] = package.loaded.luv
      if ok then
        local function viaadapter() local r = adapter.await(task) return r end
        err = remote(viaadapter)
        assert.matches("^stack traceback:\n\tspec/diagnostics_spec.lua:" .. debug.getinfo(viaadapter).linedefined .. ": in ", err.caller)
      end
    end
  end)

  it("uncaught in a script shows the isolate's traceback and the line that called run", function()
    local name = script([[
local isolate = require "isolate"
local function work()
  local r = isolate.run(function() error("deep failure") end)
  return r
end
work()
]])
    local r = sub.run(name)
    os.remove(name)
    assert.equal(1, r.code, r.report)
    assert.matches("deep failure\nremote stack traceback:\n", r.stderr, 1, true)
    assert.matches("caller's stack traceback:\n.*:3: in .*work.*\n.*:6: in main chunk", r.stderr)
  end)
end)

describe("hostile uses of the diagnostics", function()
  it("captures: a sandbox _ENV is not carried, a shared upvalue is listed once", function()
    local sandbox = {co = coroutine.create(print)}
    local f = load("return function() return co end", "=chunk", "t", sandbox)()
    assert.same({{path = "upvalue '_ENV'", type = "table", ok = true, bytes = 1, by = "globals"}},
      isolate.captures(f))
    local big = ("x"):rep(1000)
    local function a() return big end
    local function b() return big end
    local list = isolate.captures(function() return a(), b() end)
    local n = 0
    for _, e in ipairs(list) do if e.path:find("'big'") then n = n + 1 end end
    assert.equal(1, n)
  end)

  it("captures: odd package.loaded keys, a captured RemoteError, a deep chain", function()
    local odd = {}
    package.loaded[odd] = {}
    package.loaded[true] = {}
    local ok, list = pcall(isolate.captures, function() return odd end)
    package.loaded[odd], package.loaded[true] = nil, nil
    assert.is_true(ok, list)
    local err = remote(isolate.run, function() error("x") end)
    for _, e in ipairs(isolate.captures(function() return err end)) do
      assert.is_true(e.ok, e.path .. ": " .. tostring(e.why))
    end
    local chain = {}
    for _ = 1, 5000 do chain = {next = chain} end
    list = isolate.captures(function() return chain end)
    assert.is_true(#list <= 201, #list .. " entries")
    assert.equal("value nested too deeply (more than 200 levels) (at field 'next' > field 'next' > field 'next' > ... > field 'next' > field 'next' > field 'next' > field 'next')",
      list[1].why)
  end)

  it("captures: without the debug global, and says got nil for nil", function()
    local saved = G.debug
    G.debug = nil
    local ok, list = pcall(isolate.captures, function() return saved end)
    G.debug = saved
    assert.is_true(ok, list)
    assert.has_error(function() isolate.captures(nil) end,
      "bad argument #1 to 'captures' (function expected, got nil)")
  end)

  it("__concat: called directly, and with what is no string", function()
    local err = remote(isolate.run, function() error("x") end)
    local concat = getmetatable(err).__concat
    assert.has_error(function() concat() end, "attempt to concatenate a nil value")
    assert.equal("x", ("x"):rep(1))   -- the state is sound
    assert.has_error(function() return err .. nil end, "attempt to concatenate a nil value")
    assert.has_error(function() return {} .. err end, "attempt to concatenate a table value")
  end)

  it("caller: not set by result(), which raises nothing; a __newindex on the error is not called", function()
    local task = isolate.spawn(function() error("x") end)
    local ok, err = task:result()
    assert.is_false(ok)
    assert.is_nil(err.caller)
    local mt = isolate.RemoteError
    mt.__newindex = function() error("__newindex ran") end
    local ok2, err2 = pcall(isolate.run, function() error("y") end)
    mt.__newindex = nil
    assert.is_false(ok2)
    assert.equal(isolate.RemoteError, getmetatable(err2))
    assert.is_string(err2.caller)
  end)

  it("hint: a local _ENV of the caller, a long name, a message with a NUL", function()
    local long = ("n"):rep(100)
    local env = {isolate = isolate, [long] = 1}
    local f = load("local _ENV = {isolate = isolate, cube = 1} return isolate.run(function() return cube() end)",
      "=chunk", "t", env)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.matches("hint: 'cube' is a global in the caller", err.message, 1, true)
    f = load("return isolate.run(function() return " .. long .. "() end)", "=chunk", "t", env)
    ok, err = pcall(f)
    assert.matches("hint: '" .. long .. "' is a global", err.message, 1, true)
    G.square = 1
    err = remote(isolate.run, function() error("(global 'square') a\0b", 0) end)
    G.square = nil
    assert.equal("(global 'square') a\0b\nhint:", err.message:sub(1, 27))
  end)
end)
