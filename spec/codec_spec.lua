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
    assert.has_error(function() isolate.encode(1, {f = io.stdout}) end,
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
