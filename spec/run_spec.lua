local isolate = require "isolate"

-- Threads and resident memory of this process, from /proc.
local function proc_status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s*(%d+)")
    if v then return tonumber(v) end
  end
end

describe("isolate.run", function()
  it("returns the function's results", function()
    assert.same({1, "two", 3.5, true}, {isolate.run(function() return 1, "two", 3.5, true end)})
  end)

  it("runs a C function that a loaded module holds", function()
    assert.equal(5, isolate.run(math.max, 1, 5, 3))
    assert.equal("aba", isolate.run(string.rep, "a", 2, "b"))
  end)

  it("passes the extra arguments, encoded like upvalues", function()
    assert.same({5, "ab", {k = "v"}},
      {isolate.run(function(a, b, c, d, t) return a + b, c .. d, t end, 2, 3, "a", "b", {k = "v"})})
  end)

  it("keeps nils and the count of results", function()
    assert.equal(3, select("#", isolate.run(function() return nil, 2, nil end)))
    assert.equal(0, select("#", isolate.run(function() end)))
    local a, b, c = isolate.run(function(...) return ... end, nil, nil, 7)
    assert.is_nil(a); assert.is_nil(b); assert.equal(7, c)
  end)

  it("keeps integers and floats apart, with NaN, infinities and -0.0", function()
    local i, f, big, small, negz, nan, inf = isolate.run(function()
      return 1, 1.0, math.maxinteger, math.mininteger, -0.0, 0/0, -math.huge
    end)
    assert.equal("integer", math.type(i))
    assert.equal("float", math.type(f))
    assert.equal(math.maxinteger, big)
    assert.equal(math.mininteger, small)
    assert.equal(-math.huge, 1 / negz)
    assert.is_true(nan ~= nan)
    assert.equal(-math.huge, inf)
    for _, v in ipairs{0, 127, 128, -1, -128, -129, 32767, 32768, -32769, 2147483648, -2147483649, 1 << 40} do
      local r = isolate.run(function() return v end)
      assert.equal(v, r)
      assert.equal("integer", math.type(r))
    end
  end)

  it("carries strings byte for byte, short and long", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local short, long = "a\0b", table.concat(bytes):rep(5000)
    local r1, r2, r3 = isolate.run(function() return short, long, "" end)
    assert.equal(short, r1)
    assert.equal(long, r2)
    assert.equal("", r3)
  end)

  it("returns tables, nested, with their array part and other keys", function()
    local r = isolate.run(function()
      return {1, 2, nil, 4, x = {y = {z = "deep"}}, [1.5] = "float key", [true] = "bool key"}
    end)
    assert.same({1, 2, nil, 4, x = {y = {z = "deep"}}, [1.5] = "float key", [true] = "bool key"}, r)
  end)

  it("returns a large table", function()
    local t = isolate.run(function()
      local t = {}
      for i = 1, 100000 do t[i] = i * 2 end
      return t
    end)
    assert.equal(100000, #t)
    assert.equal(200000, t[100000])
  end)

  describe("upvalues", function()
    it("are copied by value: the caller's tables are unchanged", function()
      local t = {n = 1, list = {1, 2}}
      local r = isolate.run(function()
        t.n = 99
        t.list[3] = 3
        return t
      end)
      assert.same({n = 1, list = {1, 2}}, t)
      assert.same({n = 99, list = {1, 2, 3}}, r)
      assert.are_not.equal(t, r)
    end)

    it("keep cycles and shared references, on both sides", function()
      local shared = {}
      local a = {x = shared, y = shared}
      a.self = a
      assert.is_true(isolate.run(function() return a.self == a and a.x == a.y end))
      local r = isolate.run(function() return a end)
      assert.equal(r, r.self)
      assert.equal(r.x, r.y)
      assert.are_not.equal(a, r)
    end)

    it("bring nested Lua functions with their own upvalues", function()
      local base = 10
      local function add(x) return x + base end
      local function twice(x) return add(add(x)) end
      assert.equal(25, isolate.run(function() return twice(5) end))
    end)

    it("shared by two closures stay shared", function()
      local count = 0
      local function inc() count = count + 1 end
      local function get() return count end
      assert.equal(2, isolate.run(function() inc(); inc(); return get() end))
      assert.equal(0, count)
      -- the function and a closure passed as an argument share one too
      assert.equal(1, isolate.run(function(f) f(); return count end, inc))
      -- and closures returned together still share theirs in the caller
      local bump, read = isolate.run(function()
        local n = 10
        return function() n = n + 1 end, function() return n end
      end)
      bump(); bump()
      assert.equal(12, read())
    end)

    it("include metatables, copied like any table", function()
      local Point = {}
      Point.__index = Point
      function Point.norm2(p) return p.x * p.x + p.y * p.y end
      local p = setmetatable({x = 3, y = 4}, Point)
      local n, q = isolate.run(function() return p:norm2(), p end)
      assert.equal(25, n)
      assert.equal(25, q:norm2())
    end)

    it("can be functions returned to the caller", function()
      local f = isolate.run(function()
        local k = 3
        return function(x) return x * k end
      end)
      assert.equal(12, f(4))
    end)

    it("bind loaded modules by name, and require works inside", function()
      local json = require "dkjson"
      assert.equal("[1,2,3]", isolate.run(function() return json.encode({1, 2, 3}) end))
      assert.equal(4, isolate.run(function()
        local lpeg = require "lpeg"
        return lpeg.match(lpeg.P "abc", "abcd")
      end))
    end)

    it("bind C functions of loaded modules by name", function()
      local sqrt, format = math.sqrt, string.format
      assert.equal("4.0", isolate.run(function() return format("%.1f", sqrt(16)) end))
      assert.equal(math.sqrt, isolate.run(function() return math.sqrt end))
    end)

    it("find C functions by their name at the time of the call", function()
      local floor = math.floor
      assert.equal(2, isolate.run(function() return floor(2.5) end))
      math.floor = nil        -- no loaded module holds it now
      local ok, err = pcall(isolate.run, function() return floor(2.5) end)
      math.floor = floor
      assert.is_false(ok)
      assert.matches("^isolate: cannot transfer a C function that has no name in package.loaded", err)
      assert.equal(3, isolate.run(function() return floor(3.5) end))
    end)
  end)

  describe("globals", function()
    it("are the isolate's own: _ENV is never copied", function()
      -- in a spec, _ENV is busted's environment; the isolate gets its own _G
      caller_only = "set in the caller"
      assert.is_nil(isolate.run(function() return caller_only end))
      assert.equal("table", isolate.run(function() return type(string) end))
      caller_only = nil
    end)

    it("are fresh for every isolate", function()
      isolate.run(function() leaked = 1 end)
      assert.is_nil(isolate.run(function() return leaked end))
    end)

    it("have package.path and package.cpath copied from the caller", function()
      local path, cpath = isolate.run(function() return package.path, package.cpath end)
      assert.equal(package.path, path)
      assert.equal(package.cpath, cpath)
    end)
  end)

  it("runs when the caller's package paths are not strings, or package is not loaded", function()
    local path, package_module = package.path, package.loaded.package
    package.path = {}
    local ok1, task = pcall(isolate.spawn, function() return package.path end)
    package.path = path
    package.loaded.package = nil
    local ok2, r = pcall(isolate.run, function() return 2 end)
    package.loaded.package = package_module
    assert.is_true(ok1)
    assert.equal("", task:await())
    assert.is_true(ok2)
    assert.equal(2, r)
  end)

  it("runs isolates inside isolates", function()
    assert.equal("inner 2", isolate.run(function()
      return isolate.run(function(n) return "inner " .. n end, 2)
    end))
  end)

  it("runs 300 isolates in a row without more threads or memory", function()
    for _ = 1, 20 do isolate.run(function() return {1, 2, 3} end) end
    collectgarbage()
    local threads, rss = proc_status("Threads"), proc_status("VmRSS")
    for i = 1, 300 do
      assert.equal(i, isolate.run(function(x) return x end, i))
    end
    collectgarbage()
    assert.equal(threads, proc_status("Threads"))
    -- Under ASan or valgrind resident memory measures the tool (its
    -- quarantine, its allocator); their own leak checks stand in for this.
    if os.getenv("ISOLATE_SPEC_UNDER_TOOL") == nil then
      assert.is_true(proc_status("VmRSS") - rss < 4 * 1024, "resident memory grew by more than 4 MiB")
    end
  end)
end)

describe("isolate.run's fresh states", function()
  it("draw their own random numbers", function()
    local seen, repeats = {}, 0
    for _ = 1, 40 do
      local v = isolate.run(function() return math.random(1 << 40) end)
      if seen[v] then repeats = repeats + 1 end
      seen[v] = true
    end
    assert.equal(0, repeats)
  end)
end)

describe("names", function()
  it("prefer the standard libraries, then names the isolate can load", function()
    local json = require "dkjson"
    package.loaded.json = json           -- an alias that no file backs
    package.loaded["app.helpers"] = {format = string.format}
    local fmt = string.format
    local ok1, r1, ok2, r2 = true, nil, true, nil
    for _ = 1, 12 do
      local ok, r = pcall(isolate.run, function() return json.encode({1}) end)
      if not ok then ok1, r1 = false, r end
      ok, r = pcall(isolate.run, function() return fmt("%d", 42) end)
      if not ok then ok2, r2 = false, r end
    end
    package.loaded.json, package.loaded["app.helpers"] = nil, nil
    assert.is_true(ok1, tostring(r1))
    assert.is_true(ok2, tostring(r2))
    -- the name chosen is kept: still right after the alias goes
    assert.equal("[1]", isolate.run(function() return json.encode({1}) end))
  end)

  it("rank the base library (_G) as a standard library", function()
    package.loaded.x = {ts = tostring}     -- a short alias nothing can load
    local ts = tostring
    local ok, r = pcall(isolate.run, function() return ts(42) end)
    package.loaded.x = nil
    assert.is_true(ok, tostring(r))
    assert.equal("42", r)
  end)

  it("are ranked without calling package.searchpath, whatever it holds", function()
    local m, called = {}, false
    local searchpath = package.searchpath
    package.loaded["names.one"], package.loaded["names.two"] = m, m
    package.searchpath = function() called = true end
    local ok, s = pcall(isolate.encode, m)
    package.searchpath = searchpath
    package.loaded["names.one"], package.loaded["names.two"] = nil, nil
    assert.is_true(ok, tostring(s))
    assert.is_false(called)
    assert.matches("names%.one$", s)
  end)

  it("skip names with a zero byte in them", function()
    local m = {}
    package.loaded["weird\0name"] = m
    package.loaded["plain.name"] = m
    local s = isolate.encode(m)
    package.loaded["weird\0name"], package.loaded["plain.name"] = nil, nil
    assert.matches("plain%.name$", s)
  end)

  it("choose the shortest, then the first in byte order, when nothing else decides", function()
    local m = {}
    package.loaded["zz.long.name"] = m
    package.loaded["bb"] = m
    package.loaded["aa"] = m
    local s = isolate.encode(m)
    package.loaded["zz.long.name"], package.loaded["bb"], package.loaded["aa"] = nil, nil, nil
    assert.matches("aa$", s)
  end)

  it("follow package.loaded as it changes between encodes", function()
    local t, u = {1}, {2}
    local function named(v) return (isolate.encode(v)):find("cache.test", 1, true) ~= nil end
    assert.is_false(named(t))                 -- the map is made, t is no module
    package.loaded["cache.test"] = t          -- a module comes
    assert.is_true(named(t))
    package.loaded["cache.test"] = u          -- same count, another table
    assert.is_false(named(t))
    assert.is_true(named(u))
    package.loaded["cache.test"] = nil        -- a module goes
    assert.is_false(named(u))
    package.loaded["cache.test"] = t
    package.loaded["cache.other.name"] = t    -- a longer second name: the best is kept
    local s = isolate.encode(t)
    package.loaded["cache.test"], package.loaded["cache.other.name"] = nil, nil
    assert.matches("cache%.test$", s)
    assert.is_false(named(t))
  end)

  it("rank names again when package.path changes", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local t, path = {}, package.path
    package.loaded["zzrankreal"], package.loaded.ab = t, t
    local function name() return isolate.encode(t):find("zzrankreal", 1, true) and "real" or "alias" end
    local before = {name(), name()}            -- the first map, then the kept one
    local f = assert(io.open(dir .. "/zzrankreal.lua", "w"))
    f:write("return {inside = true}")
    f:close()
    package.path = dir .. "/?.lua;" .. path     -- now the real name loads
    local after = name()
    package.path = path
    package.loaded["zzrankreal"], package.loaded.ab = nil, nil
    os.remove(dir .. "/zzrankreal.lua")
    os.remove(dir)
    assert.same({"alias", "alias"}, before)     -- neither loads: the shorter
    assert.equal("real", after)
  end)

  it("lets an isolate's finalizers run after its results are handed over, and start nothing", function()
    local marker = os.tmpname()
    local r = isolate.run(function(path)
      local isolate = require "isolate"
      setmetatable({}, {__gc = function()
        local ok, err = pcall(isolate.spawn, function() return 1 end)
        local f = io.open(path, "w")
        f:write(ok and "started" or tostring(err))
        f:close()
      end})
      return "result"
    end, marker)
    assert.equal("result", r)
    local text, deadline = "", os.time() + 10
    repeat
      local f = io.open(marker)
      text = f and f:read("a") or ""
      if f then f:close() end
    until text ~= "" or os.time() > deadline
    os.remove(marker)
    assert.matches("cannot start an isolate while this isolate's state closes", text, 1, true)
  end)
end)
