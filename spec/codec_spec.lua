local isolate = require "isolate"

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
    assert.equal("\27ISO\1", isolate.encode():sub(1, 5))
  end)

  it("refuse functions unless asked for trusted input", function()
    local k = 5
    local s = isolate.encode(function(x) return x + k end)
    assert.has_error(function() isolate.decode(s) end,
      "isolate: cannot decode: function refused (decode trusted input with functions = true) (at byte 7)")
    assert.equal(7, isolate.decode(s, {functions = true})(2))
    assert.has_error(function() isolate.decode(isolate.encode(math.sqrt)) end)
    assert.equal(math.sqrt, isolate.decode(isolate.encode(math.sqrt), {functions = true}))
  end)

  it("reject input that is not theirs", function()
    assert.has_error(function() isolate.decode("hello") end, "isolate: cannot decode: not an isolate payload")
    assert.has_error(function() isolate.decode("\27ISO\9\0") end,
      "isolate: cannot decode: format version 9, expected 1")
    assert.has_error(function() isolate.decode(isolate.encode(1) .. "x") end,
      "isolate: cannot decode: 1 bytes after the values")
    assert.has_error(function() isolate.decode("\27ISO\1\1\31") end,
      "isolate: cannot decode: unknown tag (at byte 7)")
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
    local s = ("\27ISO\1\1") .. ("\9\1\0\0\0\0\0\0\0"):rep(250) .. "\0"
    assert.has_error(function() isolate.decode(s) end)
    local ok, err = pcall(isolate.decode, s)
    assert.matches("nested too deeply", err)
  end)

  it("name what cannot be encoded", function()
    assert.has_error(function() isolate.encode(1, {f = io.stdout}) end,
      "isolate: cannot transfer a userdata (FILE*) (value #2 > field 'f')")
  end)

  it("bind loaded modules by name and keep light userdata", function()
    local s = isolate.encode(string, table)
    local a, b = isolate.decode(s)
    assert.equal(string, a)
    assert.equal(table, b)
  end)
end)
