-- Wireshark dissector for trickles_kit (Trickles, the stateless network stack).
--
-- Lua 5.2 compatible (Wireshark 4.0 API). Byte layouts: docs/protocol.md.
--
--   * IP protocol 253 (preference `trickles.ip_proto`): the whole TCP-format segment (ports,
--     seq, ack, data offset, flags, window, checksum, the Trickles option kind 253 / ExID 0x544B)
--     followed by the Trickles payload.
--   * UDP port 8080 (preference `trickles.udp_port`): the same segment inside UDP.
--   * TCP (IP protocol 6) on the service port (preference `trickles.service_port`, default
--     8080): Wireshark's TCP dissector handles the header; this dissects the payload
--     (to the service port: request; from it: response).
--
-- Install: copy this file to ~/.local/lib/wireshark/plugins/ or run
-- `tshark -X lua_script:/path/to/trickles.lua ...`. Wireshark ignores Lua scripts when it runs
-- as root: run it as an ordinary user.
--
-- Every field is named under `trickles.` (trickles.seq, trickles.cont.tcpbase,
-- trickles.sack.left, trickles.data.bytenum, ...). A malformed or truncated payload adds an
-- expert error (`trickles.malformed`) whose message starts with the same reason token the Python
-- codec raises (truncated, req_type, cont_type, cont_state, minimal_request, sack_count,
-- range_count, range, chunk_len, chunk_type, short, offset, option).

local p = Proto("trickles", "Trickles")
-- The TCP port table hands over the TCP payload only; a second protocol object gives that path
-- its own entry point while every item still uses the `trickles.` fields.
local p_tcp = Proto("trickles_tcp", "Trickles over TCP")

local REQ_NAMES = { [0] = "NORMAL", [1] = "SLOWSTART", [2] = "SYN", [3] = "FIN" }
local CONT_TYPES = { [0] = "MINIMAL", [1] = "FULL1", [2] = "FULL2" }
local STATES = { [0] = "NORMAL", [1] = "RECOVERY", [2] = "BOOTSTRAP" }
local CHUNK_TYPES = { [2] = "DATA", [3] = "SKIP", [4] = "FINHINT" }
local CSUM_STATUS = { [0] = "Bad", [1] = "Good", [2] = "Unverified" }

local OPT_KIND, OPT_EXID = 253, 0x544B
local MINIMAL_LEN, FULL_LEN = 18, 75
local MAX_SACKS, MAX_RANGES = 64, 64
local MAX_CWND = 8191
local TWO32 = 4294967296

local f = {
    -- segment header (IP 253 / UDP); seq, ack, ports and flags also as generated items over TCP
    srcport = ProtoField.uint16("trickles.srcport", "Source Port", base.DEC),
    dstport = ProtoField.uint16("trickles.dstport", "Destination Port", base.DEC),
    seq = ProtoField.uint32("trickles.seq", "Sequence (packet number / request counter)",
        base.DEC),
    ack = ProtoField.uint32("trickles.ack", "Acknowledgment (k)", base.DEC),
    hdr_len = ProtoField.uint8("trickles.hdr_len", "Header Length", base.DEC),
    flags = ProtoField.uint8("trickles.flags", "Flags", base.HEX),
    flag_cwr = ProtoField.bool("trickles.flags.cwr", "CWR", 8, nil, 0x80),
    flag_ece = ProtoField.bool("trickles.flags.ece", "ECE", 8, nil, 0x40),
    flag_urg = ProtoField.bool("trickles.flags.urg", "URG", 8, nil, 0x20),
    flag_ack = ProtoField.bool("trickles.flags.ack", "ACK", 8, nil, 0x10),
    flag_psh = ProtoField.bool("trickles.flags.psh", "PSH", 8, nil, 0x08),
    flag_rst = ProtoField.bool("trickles.flags.rst", "RST", 8, nil, 0x04),
    flag_syn = ProtoField.bool("trickles.flags.syn", "SYN", 8, nil, 0x02),
    flag_fin = ProtoField.bool("trickles.flags.fin", "FIN", 8, nil, 0x01),
    window = ProtoField.uint16("trickles.window", "Window", base.DEC),
    checksum = ProtoField.uint16("trickles.checksum", "Checksum", base.HEX),
    checksum_status = ProtoField.uint8("trickles.checksum.status", "Checksum Status", base.DEC,
        CSUM_STATUS),
    urgent = ProtoField.uint16("trickles.urgent", "Urgent Pointer", base.DEC),
    opt = ProtoField.none("trickles.opt", "Trickles Option"),
    opt_kind = ProtoField.uint8("trickles.opt.kind", "Kind", base.DEC),
    opt_len = ProtoField.uint8("trickles.opt.len", "Length", base.DEC),
    opt_exid = ProtoField.uint16("trickles.opt.exid", "ExID", base.HEX),
    opt_value = ProtoField.uint16("trickles.opt.value", "Trickles Header Length", base.DEC),
    opt_other = ProtoField.bytes("trickles.opt.other", "Other TCP Option"),
    msg = ProtoField.string("trickles.msg", "Message"),
    -- request
    req_type = ProtoField.uint8("trickles.req.type", "Request Type", base.DEC, REQ_NAMES),
    sack_count = ProtoField.uint8("trickles.sack.count", "SACK Blocks", base.DEC),
    sack = ProtoField.none("trickles.sack", "SACK Block"),
    sack_left = ProtoField.uint32("trickles.sack.left", "Left (L)", base.DEC),
    sack_right = ProtoField.uint32("trickles.sack.right", "Right (R, inclusive)", base.DEC),
    sack_summary = ProtoField.uint32("trickles.sack.summary", "Nonce Summary", base.HEX),
    range_count = ProtoField.uint8("trickles.range.count", "Ranges", base.DEC),
    range = ProtoField.none("trickles.range", "Range"),
    range_start = ProtoField.uint32("trickles.range.start", "Start", base.DEC),
    range_length = ProtoField.uint32("trickles.range.length", "Length", base.DEC),
    app_len = ProtoField.uint32("trickles.app.len", "Application Bytes Length", base.DEC),
    app = ProtoField.bytes("trickles.app", "Application Bytes"),
    -- shared by both
    ucont_len = ProtoField.uint16("trickles.ucont.len", "User Continuation Length", base.DEC),
    ucont = ProtoField.bytes("trickles.ucont", "User Continuation"),
    -- response
    nonce = ProtoField.uint32("trickles.resp.nonce", "Nonce", base.HEX),
    siblings = ProtoField.uint8("trickles.resp.siblings", "Siblings", base.DEC),
    position = ProtoField.uint8("trickles.resp.position", "Position", base.DEC),
    cwnd = ProtoField.uint32("trickles.cwnd", "cwnd(ack) (closed form)", base.DEC),
    chunk = ProtoField.none("trickles.chunk", "Chunk"),
    chunk_type = ProtoField.uint8("trickles.chunk.type", "Chunk Type", base.DEC, CHUNK_TYPES),
    chunk_flags = ProtoField.uint8("trickles.chunk.flags", "Chunk Flags", base.HEX),
    chunk_len = ProtoField.uint16("trickles.chunk.len", "Chunk Length", base.DEC),
    pad = ProtoField.bytes("trickles.pad", "Padding"),
    data_bytenum = ProtoField.uint32("trickles.data.bytenum", "Byte Number", base.DEC),
    data_len = ProtoField.uint16("trickles.data.len", "Data Length", base.DEC),
    data_fin = ProtoField.bool("trickles.data.fin", "FIN"),
    data = ProtoField.bytes("trickles.data.data", "Data"),
    skip_bytenum = ProtoField.uint32("trickles.skip.bytenum", "Skip Byte Number", base.DEC),
    skip_len = ProtoField.uint32("trickles.skip.len", "Skip Length", base.DEC),
    finhint = ProtoField.uint32("trickles.finhint.bytenum", "Stream Length (FINHINT)", base.DEC),
    -- transport continuation
    cont = ProtoField.none("trickles.cont", "Continuation"),
    c_type = ProtoField.uint8("trickles.cont.type", "Type", base.DEC, CONT_TYPES),
    c_seq = ProtoField.uint32("trickles.cont.seq", "Seq (packet number)", base.DEC),
    c_firstchild = ProtoField.uint8("trickles.cont.firstchild", "First Child", base.DEC),
    c_clientstate = ProtoField.uint32("trickles.cont.clientstate", "Client State", base.DEC),
    c_parent = ProtoField.uint32("trickles.cont.parent", "Parent", base.DEC),
    c_clientts = ProtoField.uint32("trickles.cont.clienttimestamp", "Client Timestamp (ms)",
        base.DEC),
    c_ts = ProtoField.uint32("trickles.cont.timestamp", "Server Timestamp (ms)", base.DEC),
    c_mrtt = ProtoField.uint32("trickles.cont.mrtt", "Smoothed RTT x8 (ms)", base.DEC),
    c_state = ProtoField.uint8("trickles.cont.state", "State", base.DEC, STATES),
    c_firstloss = ProtoField.uint32("trickles.cont.firstloss", "First Loss", base.DEC),
    c_firstboot = ProtoField.uint32("trickles.cont.firstbootstrapseq", "First Bootstrap Seq",
        base.DEC),
    c_startcwnd = ProtoField.uint32("trickles.cont.startcwnd", "Start cwnd", base.DEC),
    c_ssthresh = ProtoField.uint32("trickles.cont.ssthresh", "ssthresh", base.DEC),
    c_tcpbase = ProtoField.uint32("trickles.cont.tcpbase", "TCPBase", base.DEC),
    c_connid = ProtoField.uint64("trickles.cont.connid", "Connection ID", base.HEX),
    c_keyepoch = ProtoField.uint32("trickles.cont.keyepoch", "Key Epoch", base.DEC),
    c_mac = ProtoField.bytes("trickles.cont.mac", "MAC"),
}

local pf_list = {}
for _, v in pairs(f) do pf_list[#pf_list + 1] = v end
p.fields = pf_list

local ef_malformed = ProtoExpert.new("trickles.malformed", "Malformed Trickles packet",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_checksum = ProtoExpert.new("trickles.checksum.bad", "Bad Trickles segment checksum",
    expert.group.CHECKSUM, expert.severity.ERROR)
local ef_optvalue = ProtoExpert.new("trickles.opt.mismatch",
    "Trickles option value does not match the header length",
    expert.group.PROTOCOL, expert.severity.WARN)
p.experts = { ef_malformed, ef_checksum, ef_optvalue }

p.prefs.service_port = Pref.uint("Service port", 8080,
    "The Trickles service port: the TCP port dissected as Trickles, and the port that tells "
    .. "requests (to it) from responses (from it)")
p.prefs.udp_port = Pref.uint("UDP port", 8080, "UDP port whose datagrams carry Trickles segments")
p.prefs.ip_proto = Pref.uint("IP protocol", 253, "IP protocol number carrying Trickles segments")
p.prefs.check_checksum = Pref.bool("Validate the segment checksum", false,
    "Verify the TCP checksum of segments carried in IP protocol 253 or UDP")

local fx_seq = Field.new("tcp.seq_raw")
local fx_ack = Field.new("tcp.ack_raw")
local fx_flags = Field.new("tcp.flags")
local fx_srcport = Field.new("tcp.srcport")
local fx_dstport = Field.new("tcp.dstport")
local fx_payload = Field.new("tcp.payload")
local fx_exid = Field.new("tcp.options.experimental.exid")
local fx_expdata = Field.new("tcp.options.experimental.data")
local fx_ip_src = Field.new("ip.src")
local fx_ip_dst = Field.new("ip.dst")

-- --------------------------------------------------------------------------- helpers

local function last(fx)
    local all = { fx() }
    return all[#all]
end

local function has_bit(x, bit)
    return math.floor(x / bit) % 2 == 1
end

local function u8(tvb, off) return tvb(off, 1):uint() end
local function u16(tvb, off) return tvb(off, 2):uint() end
local function u32(tvb, off) return tvb(off, 4):uint() end

-- cwnd(n) of the closed form (docs/protocol.md 4.1), exact in doubles: every product stays far
-- below 2^53 because windows are capped at MAX_CWND. nil when n is outside the epoch.
local function closed_form_cwnd(n, base_, c0, s)
    if n < base_ - 1 or c0 < 1 or s < c0 then return nil end
    local a = base_ + s - c0
    local w
    if n < a then
        w = c0 + math.max(n - base_, 0)
    elseif s >= MAX_CWND then
        w = s
    else
        -- largest d >= 0 with d * (2s + d - 1) <= 2k, i.e. w = s + d with w(w-1) <= s(s-1) + 2k
        local k2 = 2 * (n - a)
        local b = 2 * s - 1
        local d = math.floor((-b + math.sqrt(b * b + 4 * k2)) / 2)
        if d < 0 then d = 0 end
        if d > MAX_CWND then d = MAX_CWND end
        while d > 0 and d * (b + d) > k2 do d = d - 1 end
        while d < MAX_CWND and (d + 1) * (b + d + 1) <= k2 do d = d + 1 end
        w = s + d
    end
    if w > MAX_CWND then w = MAX_CWND end
    return w
end

-- Ones'-complement check of a segment with the protocol-6 pseudo-header.
local function checksum_ok(tvb, src, dst)
    local n = tvb:len()
    local sum = math.floor(src / 65536) + src % 65536 + math.floor(dst / 65536) + dst % 65536
        + 6 + n
    local raw = tvb:range(0, n):bytes():raw()
    local i = 1
    while i <= n do
        local hi, lo = string.byte(raw, i, i + 1)
        sum = sum + hi * 256 + (lo or 0)
        i = i + 2
        if i % 4096 == 1 then sum = sum % 65535 end
    end
    return sum % 65535 == 0
end

local Bad = {}  -- a decode error: thrown by fail(), caught in dissect_payload

local function fail(reason, detail)
    error({ bad = Bad, reason = reason, detail = detail }, 0)
end

-- --------------------------------------------------------------------------- continuation

-- Adds the continuation at `off`; returns (info table, offset past it). Mirrors
-- trickles_kit.wire.continuation.decode_continuation.
local function dissect_cont(tvb, off, tree, stop)
    if off >= stop then fail("truncated", "continuation missing") end
    local ctype = u8(tvb, off)
    local c = { type = ctype }
    if ctype == 0 then
        if off + MINIMAL_LEN > stop then fail("truncated", "minimal continuation") end
    elseif ctype == 1 or ctype == 2 then
        if off + FULL_LEN > stop then fail("truncated", "full continuation") end
    else
        tree:add(f.c_type, tvb(off, 1))
        fail("cont_type", "continuation type " .. ctype)
    end
    local len = ctype == 0 and MINIMAL_LEN or FULL_LEN
    local t = tree:add(f.cont, tvb(off, len))
    c.seq = u32(tvb, off + 1)
    t:append_text(string.format(": %s seq %d", CONT_TYPES[ctype], c.seq))
    t:add(f.c_type, tvb(off, 1))
    t:add(f.c_seq, tvb(off + 1, 4))
    t:add(f.c_firstchild, tvb(off + 5, 1))
    t:add(f.c_clientstate, tvb(off + 6, 4))
    t:add(f.c_parent, tvb(off + 10, 4))
    t:add(f.c_clientts, tvb(off + 14, 4))
    if ctype == 0 then return c, off + MINIMAL_LEN end
    t:add(f.c_ts, tvb(off + 18, 4))
    t:add(f.c_mrtt, tvb(off + 22, 4))
    t:add(f.c_state, tvb(off + 26, 1))
    t:add(f.c_firstloss, tvb(off + 27, 4))
    t:add(f.c_firstboot, tvb(off + 31, 4))
    t:add(f.c_startcwnd, tvb(off + 35, 4))
    t:add(f.c_ssthresh, tvb(off + 39, 4))
    t:add(f.c_tcpbase, tvb(off + 43, 4))
    t:add(f.c_connid, tvb(off + 47, 8))
    t:add(f.c_keyepoch, tvb(off + 55, 4))
    t:add(f.c_mac, tvb(off + 59, 16))
    c.state = u8(tvb, off + 26)
    c.startcwnd = u32(tvb, off + 35)
    c.ssthresh = u32(tvb, off + 39)
    c.tcpbase = u32(tvb, off + 43)
    if c.state > 2 then fail("cont_state", "state " .. c.state) end
    t:append_text(" " .. STATES[c.state])
    return c, off + FULL_LEN
end

-- --------------------------------------------------------------------------- request

local function dissect_request(tvb, off, stop, tree, info)
    if off >= stop then fail("truncated", "empty request") end
    local rtype = u8(tvb, off)
    tree:add(f.req_type, tvb(off, 1))
    if REQ_NAMES[rtype] == nil then fail("req_type", "request type " .. rtype) end
    info.rtype = rtype
    off = off + 1
    if rtype ~= 2 then
        local c
        c, off = dissect_cont(tvb, off, tree, stop)
        if c.type == 0 then
            fail("minimal_request", "a MINIMAL continuation cannot make a request")
        end
    end
    if off >= stop then fail("truncated", "SACK count") end
    local nsacks = u8(tvb, off)
    tree:add(f.sack_count, tvb(off, 1))
    info.sacks = nsacks
    off = off + 1
    if nsacks > MAX_SACKS then fail("sack_count", nsacks .. " SACK blocks") end
    if off + 12 * nsacks > stop then fail("truncated", "SACK blocks") end
    for _ = 1, nsacks do
        local t = tree:add(f.sack, tvb(off, 12))
        t:append_text(string.format(": %d-%d", u32(tvb, off), u32(tvb, off + 4)))
        t:add(f.sack_left, tvb(off, 4))
        t:add(f.sack_right, tvb(off + 4, 4))
        t:add(f.sack_summary, tvb(off + 8, 4))
        off = off + 12
    end
    if off + 2 > stop then fail("truncated", "ucont length") end
    local ulen = u16(tvb, off)
    tree:add(f.ucont_len, tvb(off, 2))
    off = off + 2
    if off + ulen > stop then fail("truncated", "user continuation") end
    if ulen > 0 then tree:add(f.ucont, tvb(off, ulen)) end
    off = off + ulen
    if off >= stop then fail("truncated", "range count") end
    local nr = u8(tvb, off)
    tree:add(f.range_count, tvb(off, 1))
    info.ranges = nr
    off = off + 1
    if nr > MAX_RANGES then fail("range_count", nr .. " ranges") end
    if off + 8 * nr > stop then fail("truncated", "ranges") end
    for _ = 1, nr do
        local start, length = u32(tvb, off), u32(tvb, off + 4)
        local t = tree:add(f.range, tvb(off, 8))
        t:append_text(string.format(": [%d, %d)", start, start + length))
        t:add(f.range_start, tvb(off, 4))
        t:add(f.range_length, tvb(off + 4, 4))
        if start + length > TWO32 then
            fail("range", string.format("range %d+%d passes 2^32", start, length))
        end
        off = off + 8
    end
    local app = stop - off
    info.app = app
    if app > 0 then
        tree:add(f.app_len, tvb(off, app), app):set_generated()
        tree:add(f.app, tvb(off, app))
    else
        tree:add(f.app_len, app):set_generated()
    end
end

-- --------------------------------------------------------------------------- response

local function dissect_chunks(tvb, off, stop, tree, info)
    while off < stop do
        local tf = u8(tvb, off)
        if tf == 0 then
            local s = off
            while off < stop and u8(tvb, off) == 0 do off = off + 1 end
            tree:add(f.pad, tvb(s, off - s))
        else
            if off + 3 > stop then fail("truncated", "chunk header") end
            local clen = u16(tvb, off + 1)
            local ctype, flags = math.floor(tf / 16), tf % 16
            if clen < 3 or off + clen > stop then fail("chunk_len", "chunk length " .. clen) end
            local t = tree:add(f.chunk, tvb(off, clen))
            t:add(f.chunk_type, tvb(off, 1), ctype)
            t:add(f.chunk_flags, tvb(off, 1), flags)
            t:add(f.chunk_len, tvb(off + 1, 2))
            if ctype == 2 then
                if clen < 7 then fail("chunk_len", "DATA chunk") end
                local fin = flags % 2 == 1
                t:append_text(string.format(": DATA %d+%d%s", u32(tvb, off + 3), clen - 7,
                    fin and " FIN" or ""))
                t:add(f.data_bytenum, tvb(off + 3, 4))
                t:add(f.data_len, tvb(off + 1, 2), clen - 7):set_generated()
                t:add(f.data_fin, tvb(off, 1), fin)
                if clen > 7 then t:add(f.data, tvb(off + 7, clen - 7)) end
                info.data = (info.data or 0) + 1
                if fin then info.fin = true end
            elseif ctype == 3 then
                if clen ~= 11 then fail("chunk_len", "SKIP chunk") end
                t:append_text(string.format(": SKIP %d+%d", u32(tvb, off + 3),
                    u32(tvb, off + 7)))
                t:add(f.skip_bytenum, tvb(off + 3, 4))
                t:add(f.skip_len, tvb(off + 7, 4))
            elseif ctype == 4 then
                if clen ~= 7 then fail("chunk_len", "FINHINT chunk") end
                t:append_text(string.format(": FINHINT %d", u32(tvb, off + 3)))
                t:add(f.finhint, tvb(off + 3, 4))
            else
                fail("chunk_type", "chunk type " .. ctype)
            end
            off = off + clen
        end
    end
end

local function dissect_response(tvb, off, stop, tree, info)
    if off + 8 > stop then fail("truncated", "response header") end
    tree:add(f.nonce, tvb(off, 4))
    tree:add(f.siblings, tvb(off + 4, 1))
    tree:add(f.position, tvb(off + 5, 1))
    tree:add(f.ucont_len, tvb(off + 6, 2))
    info.siblings, info.position = u8(tvb, off + 4), u8(tvb, off + 5)
    local ulen = u16(tvb, off + 6)
    local c, o = dissect_cont(tvb, off + 8, tree, stop)
    info.cont = c
    if o + ulen > stop then fail("truncated", "user continuation") end
    if ulen > 0 then tree:add(f.ucont, tvb(o, ulen)) end
    info.header_len = o + ulen - off
    o = o + ulen
    dissect_chunks(tvb, o, stop, tree, info)
    -- cwnd(k) of the packet's own epoch, for a normal continue/split (not the handshake answer)
    if c.type ~= 0 and c.state == 0 and not info.syn then
        local w = closed_form_cwnd(info.ack, c.tcpbase, c.startcwnd, c.ssthresh)
        if w ~= nil then
            info.cwnd = w
            tree:add(f.cwnd, w):set_generated()
        end
    end
end

-- --------------------------------------------------------------------------- info column

local function info_text(info)
    if info.is_request then
        local rtype = info.rtype
        if rtype == 2 then
            local s = "SYN"
            if info.ranges ~= nil then s = s .. " ranges=" .. info.ranges end
            return s
        end
        local s = "REQ " .. (rtype and REQ_NAMES[rtype] or "?") .. " ack=" .. info.ack
        if info.sacks ~= nil then s = s .. " sacks=" .. info.sacks end
        if info.ranges ~= nil then s = s .. " ranges=" .. info.ranges end
        return s
    end
    local s = (info.syn and "SYN-ACK" or "RESP") .. " pkt=" .. info.seq .. " ack=" .. info.ack
    local c = info.cont
    if c ~= nil then
        s = s .. " " .. CONT_TYPES[c.type]
        if c.state ~= nil and STATES[c.state] then s = s .. " " .. STATES[c.state] end
    end
    if info.position ~= nil then s = s .. " " .. info.position .. "/" .. info.siblings end
    if info.cwnd ~= nil then s = s .. " cwnd=" .. info.cwnd end
    if c ~= nil and not info.syn then
        if c.type == 0 then
            if info.flag_fin and not info.data then
                s = s .. " fin"
            else
                s = s .. " retransmit"
            end
        elseif c.state == 2 then
            s = s .. " bootstrap"
        elseif c.state == 0 and info.position ~= nil and info.position > 0 then
            s = s .. " split"
        end
    end
    if info.fin then s = s .. " FIN" end
    return s
end

-- --------------------------------------------------------------------------- payload entry

-- Dissects the Trickles payload tvb[off, stop); `info` carries seq/ack/flags/direction.
local function dissect_payload(tvb, off, pinfo, tree, info)
    local ok, err = pcall(function()
        if info.is_request then
            dissect_request(tvb, off, tvb:len(), tree, info)
        else
            dissect_response(tvb, off, tvb:len(), tree, info)
        end
    end)
    local text = info_text(info)
    if not ok then
        if type(err) == "table" and err.bad == Bad then
            tree:add_proto_expert_info(ef_malformed, err.reason .. ": " .. err.detail)
            text = text .. " [malformed: " .. err.reason .. "]"
        else
            -- a bug in this script: report it as malformed rather than as a Lua error
            tree:add_proto_expert_info(ef_malformed, "dissector error: " .. tostring(err))
            text = text .. " [dissector error]"
        end
    elseif not info.is_request and info.optvalue ~= nil and info.optvalue ~= info.header_len then
        tree:add_proto_expert_info(ef_optvalue, string.format(
            "option value %d, response header %d bytes", info.optvalue, info.header_len))
    elseif info.is_request and info.optvalue ~= nil and info.optvalue ~= 0 then
        tree:add_proto_expert_info(ef_optvalue, string.format(
            "option value %d in a request (0 expected)", info.optvalue))
    end
    pinfo.cols.info:set(text)
    return ok
end

local function set_direction(info, srcport, dstport, optvalue)
    local port = p.prefs.service_port
    if dstport == port then
        info.is_request = true
    elseif srcport == port then
        info.is_request = false
    else
        info.is_request = (optvalue == nil or optvalue == 0)
    end
end

-- --------------------------------------------------------------------------- whole segment

local function segment_error(pinfo, tree, reason, detail)
    tree:add_proto_expert_info(ef_malformed, reason .. ": " .. detail)
    pinfo.cols.info:set("Trickles [malformed: " .. reason .. "]")
end

-- The TCP-format segment (IP protocol 253 or UDP): header, option, then the payload.
function p.dissector(tvb, pinfo, root)
    pinfo.cols.protocol:set("Trickles")
    local n = tvb:len()
    local tree = root:add(p, tvb())
    if n < 20 then
        segment_error(pinfo, tree, "short", n .. " bytes, a TCP header needs 20")
        return n
    end
    local sport, dport = u16(tvb, 0), u16(tvb, 2)
    local info = { seq = u32(tvb, 4), ack = u32(tvb, 8) }
    local flags = u8(tvb, 13)
    local hlen = math.floor(u8(tvb, 12) / 16) * 4
    tree:add(f.srcport, tvb(0, 2))
    tree:add(f.dstport, tvb(2, 2))
    tree:add(f.seq, tvb(4, 4))
    tree:add(f.ack, tvb(8, 4))
    tree:add(f.hdr_len, tvb(12, 1), hlen)
    local ft = tree:add(f.flags, tvb(13, 1))
    for _, b in ipairs({ f.flag_cwr, f.flag_ece, f.flag_urg, f.flag_ack, f.flag_psh, f.flag_rst,
        f.flag_syn, f.flag_fin }) do
        ft:add(b, tvb(13, 1))
    end
    tree:add(f.window, tvb(14, 2))
    local ct = tree:add(f.checksum, tvb(16, 2))
    tree:add(f.urgent, tvb(18, 2))
    pinfo.src_port, pinfo.dst_port = sport, dport
    if hlen < 20 or hlen > n then
        segment_error(pinfo, tree, "offset", string.format("data offset %d with %d bytes", hlen, n))
        return n
    end
    if p.prefs.check_checksum then
        local src, dst = last(fx_ip_src), last(fx_ip_dst)
        if src ~= nil and dst ~= nil then
            local good = checksum_ok(tvb, src.range:uint(), dst.range:uint())
            ct:add(f.checksum_status, tvb(16, 2), good and 1 or 0):set_generated()
            if not good then ct:add_proto_expert_info(ef_checksum) end
        else
            ct:add(f.checksum_status, tvb(16, 2), 2):set_generated()
        end
    else
        ct:add(f.checksum_status, tvb(16, 2), 2):set_generated()
    end
    -- options, scanned as trickles_kit.wire.segment does: the first Trickles option wins, and
    -- what follows it is shown but never judged
    local i, optvalue = 20, nil
    while i < hlen do
        local kind = u8(tvb, i)
        if kind == 0 then break end
        if kind == 1 then
            i = i + 1
        else
            if i + 1 >= hlen then break end
            local olen = u8(tvb, i + 1)
            if olen < 2 or i + olen > hlen then
                if optvalue ~= nil then break end
                segment_error(pinfo, tree, "option",
                    string.format("option %d with bad length %d", kind, olen))
                return n
            end
            if kind == OPT_KIND and olen == 6 and u16(tvb, i + 2) == OPT_EXID
                and optvalue == nil then
                local ot = tree:add(f.opt, tvb(i, 6))
                ot:add(f.opt_kind, tvb(i, 1))
                ot:add(f.opt_len, tvb(i + 1, 1))
                ot:add(f.opt_exid, tvb(i + 2, 2))
                ot:add(f.opt_value, tvb(i + 4, 2))
                optvalue = u16(tvb, i + 4)
                ot:append_text(": header length " .. optvalue)
            else
                tree:add(f.opt_other, tvb(i, olen))
            end
            i = i + olen
        end
    end
    if optvalue == nil then
        segment_error(pinfo, tree, "option", "no Trickles option in the TCP header")
        return n
    end
    info.optvalue = optvalue
    info.syn = has_bit(flags, 0x02)
    info.flag_fin = has_bit(flags, 0x01)
    set_direction(info, sport, dport, optvalue)
    tree:add(f.msg, info.is_request and "request" or "response"):set_generated()
    tree:append_text(string.format(", %s, Src Port: %d, Dst Port: %d, Seq: %d, Ack: %d",
        info.is_request and "Request" or "Response", sport, dport, info.seq, info.ack))
    dissect_payload(tvb, hlen, pinfo, tree, info)
    return n
end

-- The payload of a real TCP segment (IP protocol 6): Wireshark's TCP dissector did the header.
local tcp_done_frame = -1

local function dissect_tcp_payload(tvb, pinfo, root)
    tcp_done_frame = pinfo.number
    pinfo.cols.protocol:set("Trickles")
    local tree = root:add(p, tvb())
    local seq, ack, flags = last(fx_seq), last(fx_ack), last(fx_flags)
    local sp, dp = last(fx_srcport), last(fx_dstport)
    local info = {
        seq = seq and seq.value or 0,
        ack = ack and ack.value or 0,
    }
    local fl = flags and flags.value or 0
    info.syn = has_bit(fl, 0x02)
    info.flag_fin = has_bit(fl, 0x01)
    -- the Trickles option as Wireshark's TCP dissector parsed it (RFC 6994 ExID)
    local exids, datas = { fx_exid() }, { fx_expdata() }
    for i = #exids, 1, -1 do
        local d = datas[i]
        if exids[i].value == OPT_EXID and d ~= nil and d.len == 2 then
            info.optvalue = d.range:uint()
            break
        end
    end
    local sport = sp and sp.value or pinfo.src_port
    local dport = dp and dp.value or pinfo.dst_port
    set_direction(info, sport, dport, info.optvalue)
    tree:add(f.srcport, sport):set_generated()
    tree:add(f.dstport, dport):set_generated()
    tree:add(f.seq, info.seq):set_generated()
    tree:add(f.ack, info.ack):set_generated()
    tree:add(f.flags, fl % 256):set_generated()
    if info.optvalue ~= nil then tree:add(f.opt_value, info.optvalue):set_generated() end
    tree:add(f.msg, info.is_request and "request" or "response"):set_generated()
    tree:append_text(string.format(", %s, Seq: %d, Ack: %d",
        info.is_request and "Request" or "Response", info.seq, info.ack))
    pinfo.cols.info:clear_fence()
    dissect_payload(tvb, 0, pinfo, tree, info)
    return tvb:len()
end

function p_tcp.dissector(tvb, pinfo, root)
    return dissect_tcp_payload(tvb, pinfo, root)
end

-- With sequence analysis on (the default), Wireshark's TCP dissector does not hand segments it
-- takes for retransmissions or out-of-order segments to subdissectors, and Trickles sequence
-- numbers count packets, not bytes, so that is most of them. This postdissector dissects the
-- TCP payload of every service-port segment the TCP dissector kept to itself.
local p_post = Proto("trickles_tcp_post", "Trickles over TCP (segments TCP analysis kept)")

function p_post.dissector(_, pinfo, root)
    if tcp_done_frame == pinfo.number then return end
    local sp, dp = last(fx_srcport), last(fx_dstport)
    if sp == nil or dp == nil then return end
    local port = p.prefs.service_port
    if sp.value ~= port and dp.value ~= port then return end
    local pl = last(fx_payload)
    if pl == nil or pl.len == 0 then return end
    dissect_tcp_payload(pl.range:tvb(), pinfo, root)
end

register_postdissector(p_post)

-- --------------------------------------------------------------------------- registration

local registered = {}

local function register()
    local udp = DissectorTable.get("udp.port")
    local tcp = DissectorTable.get("tcp.port")
    local ip = DissectorTable.get("ip.proto")
    if registered.udp then udp:remove(registered.udp, p) end
    if registered.tcp then tcp:remove(registered.tcp, p_tcp) end
    if registered.ip then ip:remove(registered.ip, p) end
    registered.udp = p.prefs.udp_port
    registered.tcp = p.prefs.service_port
    registered.ip = p.prefs.ip_proto
    udp:add(registered.udp, p)
    tcp:add(registered.tcp, p_tcp)
    ip:add(registered.ip, p)
end

function p.prefs_changed()
    register()
end

register()
