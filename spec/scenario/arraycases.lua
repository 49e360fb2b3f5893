-- Arrays for spec/inplace_spec.lua and spec/scenario/arrays.lua: every
-- kind of value the codec reads and writes in place, and every shape of
-- array part.  No table has a string key among other keys: their order
-- changes with the process's hash seed, and the two runs compare bytes.
local M = {}

function M.cases()
  local cases = {}
  local function case(name, value) cases[#cases + 1] = {name = name, value = value} end
  case("integers of every width", {0, 1, 127, 128, -1, -128, -129, 255, 256, 32767, 32768,
    -32768, -32769, 65535, 2^31 // 1 - 1, 2^31 // 1, -2^31 // 1, -2^31 // 1 - 1,
    math.maxinteger, math.mininteger})
  case("floats", {0.5, -0.0, 1 / 0, -1 / 0, 2.0^53, 1e308, 5e-324, 3.0, -2.5, 0.0})
  case("booleans", {true, false, true, false})
  case("mixed", {1, "a", 2.5, {3, 4}, true, "b", 4, false, 5.0})
  case("a hole", {1, nil, 3})
  case("a hole first", {nil, 2, 3})
  case("array and other keys", {1, 2, 3, [10] = 10, [2.5] = 1, [true] = false})
  case("array and a field", {1, 2, 3, x = "y"})
  local reverse = {}
  for i = 100, 1, -1 do reverse[i] = i end
  case("built backwards", reverse)
  local shrunk = {}
  for i = 1, 1000 do shrunk[i] = i end
  for i = 501, 1000 do shrunk[i] = nil end
  case("shrunk", shrunk)
  local gap = {}
  for i = 1, 8 do gap[i] = i * 1.5 end
  gap[5] = nil
  case("a gap in the array part", gap)
  local past = {1, 2, 3, 4}
  past[6], past[5] = 6, 5
  case("ending past the array part", past)
  local ints, floats, sprinkled = {}, {}, {}
  for i = 1, 100000 do
    ints[i] = i * 7919 - 300000
    floats[i] = i / 3
    sprinkled[i] = i % 1000 == 0 and ("s" .. i) or i % 997 == 0 and {i} or i
  end
  case("100,000 integers", ints)
  case("100,000 floats", floats)
  case("100,000 values, a few of them not numbers", sprinkled)
  case("nested", {{1, 2}, {{3.5}, {true}}, {}})
  case("empty", {})
  return cases
end

-- whether a and b are the same data: the same number subtypes, -0.0 and
-- NaN told apart, the same keys
function M.same(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " ~= " .. type(b) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false, path .. ": " .. math.type(a) .. " ~= " .. math.type(b) end
    if a ~= a and b ~= b then return true end
    if a ~= b or 1 / a ~= 1 / b then return false, path .. ": " .. a .. " ~= " .. b end
    return true
  end
  if type(a) ~= "table" then return a == b, path end
  for k, v in pairs(a) do
    local ok, why = M.same(v, b[k], path .. "[" .. tostring(k) .. "]")
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "[" .. tostring(k) .. "]: extra" end
  end
  return true
end

return M
