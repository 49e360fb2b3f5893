-- The codec reads the array parts of tables, and writes numbers and
-- booleans into them, in place (src/luatable.h).  These specs hold it to
-- what the C API would have done: the same values, the same bytes, no
-- crash when Lua changes a table while it is read, and no trust in input.
local isolate = require "isolate"
local core = require "isolate.core"
local subprocess = dofile("spec/subprocess.lua")
local arrays = dofile("spec/scenario/arraycases.lua")

local HEAD = "\27ISO\3\1" .. ("\0"):rep(8)	-- one value, no names
local function u32(n) return string.pack("<I4", n) end
local function array(n, body) return HEAD .. "\9" .. u32(n) .. u32(0) .. body end

describe("arrays in place", function()
  it("are read and written in place in this build", function()
    if os.getenv("ISOLATE_API_ONLY") then
      assert.is_false(core._inplace)
    else
      assert.is_true(core._inplace)
    end
  end)

  describe("keep every value", function()
    for _, case in ipairs(arrays.cases()) do
      it("through encode and decode: " .. case.name, function()
        assert(arrays.same(case.value, isolate.decode(isolate.encode(case.value))))
      end)
    end

    it("as the result of an isolate, and as its argument", function()
      for _, case in ipairs(arrays.cases()) do
        local back = isolate.run(function(v) return v end, case.value)
        local ok, why = arrays.same(case.value, back)
        assert(ok, case.name .. ": " .. tostring(why))
      end
    end)
  end)

  it("write the bytes that the C API path writes", function()
    local script = "spec/scenario/arrays.lua"
    local inplace = subprocess.run(script, {}, {timeout = 60, env = {"ISOLATE_API_ONLY="}})
    local api = subprocess.run(script, {}, {timeout = 60, env = {"ISOLATE_API_ONLY=1"}})
    assert.equal(0, inplace.code, inplace.report)
    assert.equal(0, api.code, api.report)
    assert.equal("true", inplace.stdout:match("^(%a+)\n"))
    assert.equal("false", api.stdout:match("^(%a+)\n"))
    assert.equal(api.stdout:gsub("^%a+\n", ""), (inplace.stdout:gsub("^%a+\n", "")))
  end)

  describe("make tables that behave as Lua's own", function()
    it("for length, ipairs, next, appending and removing", function()
      local t = isolate.decode(isolate.encode({1, 2.5, true, false, 5}))
      assert.equal(5, #t)
      local n = 0
      for i, v in ipairs(t) do n = n + 1; assert.equal(t[i], v) end
      assert.equal(5, n)
      n = 0
      for _ in pairs(t) do n = n + 1 end
      assert.equal(5, n)
      table.insert(t, 6)
      t[#t + 1] = 7
      assert.equal(7, #t)
      assert.equal(1, table.remove(t, 1))
      assert.same({2.5, true, false, 5, 6, 7}, t)
      assert.equal("integer", math.type(t[4]))
      assert.equal("float", math.type(t[1]))
      collectgarbage()
      assert.same({2.5, true, false, 5, 6, 7}, t)
    end)

    it("leaving the slot of a nil empty", function()
      local t = isolate.decode(array(3, "\129\0\131"))
      assert.equal(1, t[1])
      assert.is_nil(t[2])
      assert.equal(3, t[3])
      local keys = {}
      for k in pairs(t) do keys[#keys + 1] = k end
      assert.same({1, 3}, keys)
      assert.is_nil(next(isolate.decode(array(2, "\0\0"))))
    end)
  end)

  describe("when Lua changes the table while it is encoded", function()
    local function object(act)
      return setmetatable({}, {__isolate = function() act(); return function() return "made" end end})
    end

    it("that grows it: no crash, what was there is kept", function()
      local t = {1, 2, 3}
      t[4] = object(function() for i = 5, 20000 do t[i] = i end end)
      t[5] = 5
      local r = isolate.decode(isolate.encode(t), {trusted = true})
      assert.same({1, 2, 3}, {r[1], r[2], r[3]})
      assert.equal("made", r[4])
      assert.equal(5, r[5])
    end)

    it("that empties it", function()
      local t = {1, 2, 3}
      t[4] = object(function() for k in pairs(t) do t[k] = nil end end)
      for i = 5, 1000 do t[i] = i end
      local r = isolate.decode(isolate.encode(t), {trusted = true})
      assert.same({1, 2, 3, "made"}, r)
    end)

    it("that turns it into a hash", function()
      local t = {1, 2, 3}
      t[4] = object(function()
        for i = 1, 3 do t[i] = nil end
        for i = 1, 100 do t["k" .. i] = i end
        collectgarbage()
      end)
      for i = 5, 64 do t[i] = i * 0.5 end
      local ok, err = pcall(isolate.encode, t)	-- next may refuse a key that went
      if ok then
        local r = isolate.decode(err, {trusted = true})
        assert.equal("made", r[4])
        assert.equal(32.0, r[64])
      else
        assert.matches("next", tostring(err))
      end
    end)
  end)

  describe("when Lua changes the table while it is decoded", function()
    it("a constructor given the table, that shrinks it: the rest goes in through the API", function()
      local t = {}
      t[1] = setmetatable({}, {__isolate = function()
        return function(p)
          for i = 1, #p do p[i] = nil end
          for i = 1, 200 do p["k" .. i] = i end
          collectgarbage()
          return "made"
        end, t
      end})
      for i = 2, 5000 do t[i] = i * 1.5 end
      local r = isolate.decode(isolate.encode(t), {trusted = true})
      assert.equal("made", r[1])
      for i = 2, 5000 do assert.equal(i * 1.5, r[i]) end
      assert.equal(200, r.k200)
    end)

    it("a constructor that set a later slot: a nil decoded there clears it", function()
      local t = {}
      t[1] = setmetatable({}, {__isolate = function()
        return function(outer) outer[3] = "kept"; return "made" end, t
      end})
      t[2], t[3], t[4] = 1, 2, 3
      local msg = isolate.encode(t)
      local at = assert(msg:find("\x81\x82\x83", 1, true))	-- make the 2 a nil
      msg = msg:sub(1, at) .. "\0" .. msg:sub(at + 2)
      local r = isolate.decode(msg, {trusted = true})
      assert.equal("made", r[1])
      assert.is_nil(r[3])
      assert.equal(3, r[4])
    end)

    it("a finalizer that reaches the table through the debug library and adds a key", function()
      local t = {"MARK"}
      for i = 2, 1000 do t[i] = ("s"):rep(60) .. i end	-- each one allocates
      for i = 1001, 3000 do t[i] = i end
      local msg, hits = isolate.encode(t), 0
      local function finalizer()
        for level = 2, 6 do		-- (the C function that decodes, where it is)
          local info = debug.getinfo(level, "S")
          if info and info.what == "C" then
            for n = 1, 20 do
              local name, v = debug.getlocal(level, n)
              if name == nil then break end
              if type(v) == "table" and v ~= t and rawget(v, 1) == "MARK" and rawget(v, "x") == nil then
                hits = hits + 1
                v.x = true	-- a new key in a full table: Lua shrinks its array part
              end
            end
          end
        end
        if hits == 0 then setmetatable({}, {__gc = finalizer}) end
      end
      local mode = collectgarbage("incremental")
      collectgarbage()
      local pause, stepmul = collectgarbage("setpause", 0), collectgarbage("setstepmul", 100)
      local r
      for _ = 1, 500 do
        for _ = 1, 500 do setmetatable({}, {__gc = finalizer}) end
        r = isolate.decode(msg)
        if hits > 0 then break end
      end
      collectgarbage("setpause", pause)
      collectgarbage("setstepmul", stepmul)
      collectgarbage(mode)
      assert.is_true(hits > 0, "no finalizer reached the table being decoded")
      assert.is_true(r.x)
      for i = 1001, 3000 do assert.equal(i, r[i]) end
    end)
  end)

  describe("trust no input", function()
    it("refuse every cut of an array of numbers", function()
      local msg = isolate.encode({1, 200, -40000, 2^40 // 1, 0.5, true, false, math.mininteger, 7})
      for n = 1, #msg - 1 do
        local ok, err = pcall(isolate.decode, msg:sub(1, n))
        assert.is_false(ok, "a message cut at byte " .. n .. " decoded")
        assert.matches("cannot decode", err)
      end
    end)

    it("refuse an array that promises more elements than its bytes", function()
      assert.error_matches(function() isolate.decode(array(100, "\129\130")) end,
        "table larger than its input")
      assert.error_matches(function() isolate.decode(array(3, "\129\7\0\0")) end,
        "truncated input")
    end)

    it("refuse a number whose bytes run into the names section", function()
      local msg = isolate.encode({1.5, 2.5})
      -- the names offset points at the last float's second byte
      local cut = #msg - 7
      local bad = msg:sub(1, 6) .. string.pack("<I8", cut) .. msg:sub(15)
      local ok, err = pcall(isolate.decode, bad)
      assert.is_false(ok)
      assert.matches("cannot decode", err)
    end)

    it("refuse an unknown tag in an array", function()
      assert.error_matches(function() isolate.decode(array(2, "\129\31")) end, "cannot decode")
    end)
  end)

  -- A decoded string or array of ISOLATE_PREFAULT (256 KiB) bytes or more
  -- is made in memory mapped in at once: by an isolate's own allocator, or
  -- in another state by its allocator, wrapped for that one value.
  describe("big enough to be made in prefaulted memory", function()
    local big = ("0123456789abcdef"):rep(1 << 16)	-- 1 MiB

    local function numbers(n)
      local t = {}
      for i = 1, n do t[i] = i * 0.5 end
      return t
    end

    it("keep every byte and slot, on every path", function()
      assert.equal(big, isolate.decode(isolate.encode(big)))
      assert.equal(big, isolate.run(function(s) return s end, big))
      assert.equal(big .. "!", isolate.spawn(function(s) return s .. "!" end, big):await())
      local t = numbers(40000)			-- 640 KiB of slots, not lent
      t[#t + 1] = "a string"
      local back = isolate.decode(isolate.encode(t))
      assert.equal(#t, #back)
      for i = 1, #t do assert.equal(t[i], back[i]) end
      local lent = isolate.run(numbers, 100000)	-- lent
      assert.equal(100000, #lent)
      for i = 1, #lent do assert.equal(i * 0.5, lent[i]) end
    end)

    it("past an isolate's memory limit fail as any allocation does, and the limit still holds after", function()
      local pool = isolate.pool{size = 1, memory_limit = 4 * 1024 * 1024}
      local huge = big:rep(6)
      local array = numbers(400000)		-- 6.4 MB of slots
      for _ = 1, 3 do
        local ok, err = pcall(pool.run, pool, function(s) return #s end, huge)
        assert.is_false(ok)
        assert.equal("memory", err.kind)
        ok, err = pcall(pool.run, pool, function(t) return #t end, array)
        assert.is_false(ok)
        assert.equal("memory", err.kind)
        assert.equal(#big, pool:run(function(s) return #s end, big))
        -- the limit still holds: the allocator that counts is in place
        ok, err = pcall(pool.run, pool, function() return ("x"):rep(8 * 1024 * 1024) end)
        assert.is_false(ok)
        assert.equal("memory", err.kind)
      end
      pool:close()
    end)

    it("in an isolate that loops over them can be cancelled at any point of the loop", function()
      -- an isolate's state is told by its allocator, also by the signal
      -- handler of a cancel: its own allocator maps the big values in
      local tool = os.getenv("ISOLATE_SPEC_UNDER_TOOL")
      local msg = isolate.encode(("x"):rep((tool and 4 or 32) * 1024 * 1024))
      local pool = isolate.pool{size = 1}
      for try = 1, tool and 3 or 10 do
        local task = pool:spawn(function(m)
          local isolate = require "isolate"
          while true do
            local s = isolate.decode(m)
            s = nil
            collectgarbage()
          end
        end, msg)
        task:wait(0.05 + try * 0.013)
        task:cancel()
        assert.is_true(task:wait(5), "try " .. try .. ": the cancel was lost")
        assert.equal("cancelled", task:status())
      end
      pool:close()
    end)

    it("that fail in an isolate's state that goes on leave its allocator counting as before", function()
      -- the failure is in the isolate's own state, which lives on
      local pool = isolate.pool{size = 1, memory_limit = 6 * 1024 * 1024}
      local msg = isolate.encode(("z"):rep(3500 * 1024))
      local held = {}
      for i = 1, 40000 do held[i] = i * 0.5 end
      local tmsg = isolate.encode(held)	-- 640 KiB of slots
      for _ = 1, 3 do
        local fails, again, tfails, limited = pool:run(function(m, tm)
          local isolate = require "isolate"
          local ok = pcall(isolate.decode, m)
          local ok2 = pcall(isolate.decode, m)
          assert(not isolate.ismain(), "the allocator that tells an isolate was replaced")
          local junk = {}
          for i = 1, 40 do junk[i] = ("q"):rep(1000 * i) end
          collectgarbage()
          local fill = {}
          while collectgarbage("count") < 5700 do fill[#fill + 1] = ("f"):rep(32 * 1024); collectgarbage() end
          local ok3 = pcall(isolate.decode, tm)
          fill = nil
          collectgarbage()
          local ok4 = pcall(string.rep, "x", 7 * 1024 * 1024)
          assert(not isolate.ismain(), "the allocator that tells an isolate was replaced")
          return not ok, not ok2, not ok3, not ok4
        end, msg, tmsg)
        assert.is_true(fails)
        assert.is_true(again)
        assert.is_true(tfails)
        assert.is_true(limited)
      end
      pool:close()
    end)

    it("while finalizers and coroutines of the caller run between them", function()
      for _ = 1, 20 do
        setmetatable({}, {__gc = function() local _ = big .. "x" end})
        local co = coroutine.wrap(function(s) return isolate.decode(isolate.encode(s)) end)
        assert.equal(big, co(big))
        collectgarbage()
      end
    end)
  end)
end)
