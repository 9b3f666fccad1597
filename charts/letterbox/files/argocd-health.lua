-- Argo CD health of a letterbox.dev object (MailDomain, Mailbox, Alias, DKIMKey), from the
-- Ready condition the operator writes and the generation it was computed from.
local hs = {status = "Progressing", message = "Waiting for the Letterbox operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to reconcile generation " .. generation
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if generation ~= nil and condition.observedGeneration ~= nil
        and condition.observedGeneration < generation then
      hs.message = "Waiting for the operator to reconcile generation " .. generation
      return hs
    end
    local text = condition.reason or ""
    if condition.message ~= nil and condition.message ~= "" then
      text = text .. ": " .. condition.message
    end
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.status == "False" then
      hs.status = "Degraded"
    end
    if text ~= "" then
      hs.message = text
    end
    return hs
  end
end
return hs
