-- Argo CD health of a kubetune FineTuneJob, read from the status the operator writes:
-- Succeeded is Healthy, Failed is Degraded (with the Failed condition's message), Suspended
-- is Suspended, a fixed field edited under a running job (Valid False, ImmutableSpecChanged)
-- is Degraded with what to do, and anything else (Pending, Queued, Running, or no status yet) is
-- Progressing, with the training progress when there is some.
-- Argo CD runs this with Lua 5.1 and only the base, string, table and math libraries.

local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- The condition's message, else its reason, else the fallback.
local function explain(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function progress(p)
  if p == nil then
    return nil
  end
  local parts = {}
  local percent = p.percent
  if percent == nil and p.step ~= nil and p.totalSteps ~= nil and p.totalSteps > 0 then
    percent = 100 * p.step / p.totalSteps
  end
  if percent ~= nil then
    table.insert(parts, string.format("%d%%", math.floor(percent)))
  end
  if p.step ~= nil and p.totalSteps ~= nil then
    table.insert(parts, string.format("step %d/%d", math.floor(p.step), math.floor(p.totalSteps)))
  elseif p.step ~= nil then
    table.insert(parts, string.format("step %d", math.floor(p.step)))
  end
  if p.loss ~= nil then
    table.insert(parts, string.format("loss %.4g", p.loss))
  end
  if #parts == 0 then
    return nil
  end
  return table.concat(parts, ", ")
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = explain(condition(status, "Succeeded"), "Training succeeded")
  if status.output ~= nil and status.output.location ~= nil then
    hs.message = hs.message .. " (" .. status.output.location .. ")"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(condition(status, "Failed"), "Training failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = explain(condition(status, "Suspended"), "Suspended")
else
  hs.status = "Progressing"
  local generation = obj.metadata and obj.metadata.generation
  local valid = condition(status, "Valid")
  if valid ~= nil and valid.status == "False" and valid.reason == "ImmutableSpecChanged" then
    -- An edit the API server let through (no CEL rules) that the operator does not apply:
    -- the job goes on with its old spec, and the edited one will never be reached.
    hs.status = "Degraded"
    hs.message = explain(valid, "The spec changed after the job started")
  elseif generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
    hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  elseif phase == "Running" then
    hs.message = "Running: " .. (progress(status.progress) or "starting")
  elseif phase == "Queued" then
    hs.message = "Queued: " .. explain(condition(status, "Admitted"), "waiting for quota")
  else
    -- Pending: the preflight, or a retry being prepared; the Running condition says which.
    hs.message = phase .. ": " .. explain(condition(status, "Running"), "preparing")
  end
end
return hs
