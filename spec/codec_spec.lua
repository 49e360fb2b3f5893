local isolate = require "isolate"

-- The header of a message of n values without names: magic, version,
-- count, and the 8-byte offset of the names section (0: none).
local function HEAD(n) return "\27ISO\2" .. string.char(n) .. ("\0"):rep(8) end

describe("isolate.encode and isolate.decode", function()
  it("round-trip values, keeping identity inside one transfer", function()
    local shared = {"s"}
    local t = {1, 2.5, "x", true, a = shared, b = shared, [10] = false}
    t.self = t
    local s = isolate.encode(nil, 42, t, "tail")
    assert.equal("string", type(s))
    local n, r, tail = select("#", isolate.decode(s)), select(3, isolate.decode(s))
    assert.equal(4, n)
    assert.equal(r, r.self)
    assert.equal(r.a, r.b)
    assert.same({"s"}, r.a)
    assert.equal(2.5, r[2])
    assert.is_false(r[10])
    assert.equal("tail", tail)
  end)

  it("start with a magic and a version byte", function()
    assert.equal("\27ISO\2", isolate.encode():sub(1, 5))
  end)

  it("refuse functions unless asked for trusted input", function()
    local k = 5
    local s = isolate.encode(function(x) return x + k end)
    assert.has_error(function() isolate.decode(s) end,
      "isolate: cannot decode: function refused (decode trusted input with {trusted = true}) (at byte 15)")
    assert.equal(7, isolate.decode(s, {trusted = true})(2))
    assert.has_error(function() isolate.decode(isolate.encode(math.sqrt)) end,
      "isolate: cannot decode: module refused (decode trusted input with {trusted = true}) (at byte 14)")
    assert.equal(math.sqrt, isolate.decode(isolate.encode(math.sqrt), {trusted = true}))
  end)

  it("reject input that is not theirs", function()
    assert.has_error(function() isolate.decode("hello") end, "isolate: cannot decode: not an isolate payload")
    assert.has_error(function() isolate.decode("\27ISO\9\0") end,
      "isolate: cannot decode: format version 9, expected 2")
    assert.has_error(function() isolate.decode(isolate.encode(1) .. "x") end,
      "isolate: cannot decode: 1 bytes after the values")
    assert.has_error(function() isolate.decode(HEAD(1) .. "\31") end,
      "isolate: cannot decode: unknown tag (at byte 15)")
  end)

  it("raise a clear error, never crash, on every truncation and on corrupted bytes", function()
    local s = isolate.encode({1, "two", {3, x = 4.5, y = {"deep"}}, ("z"):rep(100)}, -7, 1 << 40)
    for i = 0, #s - 1 do
      local ok, err = pcall(isolate.decode, s:sub(1, i))
      assert.is_false(ok)
      assert.matches("^isolate: cannot decode", err)
    end
    -- flip each byte: an error or some values, but the process survives
    for i = 6, #s do
      for _, b in ipairs{0, 0x7f, 0xff} do
        local bad = s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)
        local ok, err = pcall(isolate.decode, bad)
        if not ok then assert.matches("^isolate: ", err) end
      end
    end
  end)

  it("refuse input nested past the depth limit", function()
    local s = HEAD(1) .. ("\9\1\0\0\0\0\0\0\0"):rep(250) .. "\0"
    local ok, err = pcall(isolate.decode, s)
    assert.is_false(ok)
    assert.matches("nested too deeply", err)
  end)

  it("name what cannot be encoded", function()
    assert.has_error(function() isolate.encode(1, {f = io.tmpfile()}) end,
      "isolate: cannot transfer a userdata (FILE*) (value #2 > field 'f')")
  end)

  it("bind loaded modules by name and keep light userdata, trusted", function()
    local s = isolate.encode(string, table, string)
    local a, b, c = isolate.decode(s, {trusted = true})
    assert.equal(string, a)
    assert.equal(table, b)
    assert.equal(string, c)
  end)
end)

-- A message header (see codec_spec's HEAD) for n values, no names.
local function head(n) return "\27ISO\2" .. string.char(n) .. ("\0"):rep(8) end
local function u32(n) return string.pack("<I4", n) end

-- KB that decoding 's' allocates, measured with the collector stopped so
-- that everything it made is still counted; the decode may fail.
local function allocated(s, opts)
  collectgarbage()
  collectgarbage("stop")
  local before = collectgarbage("count")
  pcall(isolate.decode, s, opts)
  local after = collectgarbage("count")
  collectgarbage("restart")
  collectgarbage()
  return after - before
end

describe("the decoder trusts nothing", function()
  it("reads names as plain strings: 100,000 repeated tags are an error, not a stack overflow", function()
    for tag = 0, 0x1f do
      local s = head(1) .. string.char(tag):rep(100000)
      for _, opts in ipairs{{}, {trusted = true}} do
        local ok, err = pcall(isolate.decode, s, opts)
        assert.is_false(ok, "tag " .. tag)
        assert.matches("^isolate: cannot ", err)
      end
    end
    -- and so inside an isolate, which must not take the process down
    local ok, err = pcall(isolate.run, function(s) return isolate.decode(s, {trusted = true}) end,
      head(1) .. ("\15"):rep(100000))
    assert.is_false(ok)
    assert.matches("cannot decode", err.message)
  end)

  it("counts every table and function toward the depth limit of 200 levels, on both sides", function()
    local t = {}
    for _ = 1, 199 do t = {t} end          -- 200 levels
    local s = isolate.encode(t)
    local r = isolate.decode(s)
    for _ = 1, 199 do r = r[1] end
    assert.same({}, r)
    local ok, err = pcall(isolate.encode, {t})
    assert.is_false(ok)
    assert.matches("^isolate: value nested too deeply %(more than 200 levels%)", err)
    -- the same 201 levels, hand-made, refused by the decoder
    local deep = head(1) .. ("\9\1\0\0\0\0\0\0\0"):rep(200) .. "\9\0\0\0\0\0\0\0\0"
    ok, err = pcall(isolate.decode, deep)
    assert.is_false(ok)
    assert.matches("nested too deeply %(more than 200 levels%)", err)
    assert.equal(1, select("#", isolate.decode(head(1) .. ("\9\1\0\0\0\0\0\0\0"):rep(199) .. "\9\0\0\0\0\0\0\0\0")))
    -- functions nest too: a closure whose upvalue is a closure...
    local f = function() return 0 end
    for _ = 1, 250 do local g = f; f = function() return g() + 1 end end
    ok, err = pcall(isolate.encode, f)
    assert.is_false(ok)
    assert.matches("nested too deeply", err)
  end)

  it("draws every size hint from one budget: nested headers cannot claim the same bytes", function()
    -- 200 nested tables, each claiming as many elements as bytes remain
    local pad = 1000000
    local parts, rest = {}, 200 * 9 + pad
    for i = 1, 200 do
      rest = rest - 9
      parts[i] = "\9" .. u32(rest) .. u32(0)
    end
    local s = head(1) .. table.concat(parts) .. ("\0"):rep(pad)
    local ok, err = pcall(isolate.decode, s)
    assert.is_false(ok)
    assert.matches("^isolate: cannot decode", err)
    local kb = allocated(s)
    assert.is_true(kb * 1024 < 64 * #s, "allocated " .. kb .. " KB for " .. #s .. " bytes")
    -- a hash part claiming twice the input, and a count of values larger than it
    assert.has_error(function() isolate.decode(head(1) .. "\9" .. u32(0) .. u32(1000) .. ("\128"):rep(1000)) end,
      "isolate: cannot decode: table larger than its input (at byte 23)")
    assert.has_error(function() isolate.decode("\27ISO\2\200\1" .. ("\0"):rep(8) .. ("\128"):rep(100)) end,
      "isolate: cannot decode: more values than input (at byte 15)")
  end)

  it("allocates at most a small constant times the size of any input", function()
    local n = 200000
    local inputs = {
      -- many empty tables in one array
      head(1) .. "\9" .. u32(n) .. u32(0) .. ("\9" .. u32(0) .. u32(0)):rep(n),
      -- one array of empty strings, one of small integers
      head(1) .. "\9" .. u32(n) .. u32(0) .. ("\32"):rep(n),
      head(1) .. "\9" .. u32(0) .. u32(n) .. ("\129\128"):rep(n) .. "",
      -- many values at the top level
      "\27ISO\2" .. "\128\128\1" .. ("\0"):rep(8) .. ("\128"):rep(16384),
      -- the same, cut short: the decoder fails after allocating
      head(1) .. "\9" .. u32(n) .. u32(0) .. ("\9" .. u32(0) .. u32(0)):rep(n // 2),
    }
    for i, s in ipairs(inputs) do
      local kb = allocated(s)
      assert.is_true(kb * 1024 < 64 * #s, "input " .. i .. ": allocated " .. kb .. " KB for " .. #s .. " bytes")
    end
  end)

  it("is data only unless trusted: no globals, modules, C functions, functions or light userdata", function()
    local refused = {
      {_G, "globals table"},
      {{__newindex = _G}, "globals table"},
      {string, "module"},
      {setmetatable({}, string), "module"},
      {string.rep, "module"},
      {function() end, "function"},
    }
    for _, case in ipairs(refused) do
      local ok, err = pcall(isolate.decode, isolate.encode(case[1]))
      assert.is_false(ok)
      assert.matches("^isolate: cannot decode: " .. case[2] .. " refused %(decode trusted input with {trusted = true}%)", err)
    end
    -- a light userdata, hand-made
    local ok, err = pcall(isolate.decode, head(1) .. "\17" .. ("\0"):rep(8))
    assert.is_false(ok)
    assert.matches("light userdata refused", err)
    -- trusted, they are bound again
    assert.equal(_G, isolate.decode(isolate.encode(_G), {trusted = true}))
    assert.equal(string.rep, isolate.decode(isolate.encode(string.rep), {trusted = true}))
    -- and plain data decodes without trust
    assert.same({1, "x", {y = true}}, isolate.decode(isolate.encode({1, "x", {y = true}})))
  end)

  it("checks the names section of trusted input", function()
    local s = isolate.encode(string)
    -- the offset of the names section pointing past the input, or inside a value
    local bad_offset = s:sub(1, 6) .. string.pack("<I8", #s + 100) .. s:sub(15)
    assert.has_error(function() isolate.decode(bad_offset, {trusted = true}) end)
    local ok, err = pcall(isolate.decode, s:sub(1, 6) .. string.pack("<I8", 3) .. s:sub(15), {trusted = true})
    assert.is_false(ok)
    assert.matches("^isolate: cannot decode: bad names offset", err)
    -- a module name index out of range
    ok, err = pcall(isolate.decode, s:sub(1, 14) .. "\15\9" .. s:sub(17), {trusted = true})
    assert.is_false(ok)
    assert.matches("^isolate: cannot decode", err)
  end)
end)
