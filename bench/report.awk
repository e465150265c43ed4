# Turns bench/run_bench.sh's runs file into the table (stdout) and the JSON
# file. Plain POSIX awk (Debian's default is mawk): no asort, no gensub.
#
# Variables: allocs, workloads (space-separated lists), json (output path).
#
# Input lines:
#   # ... cpus=N ... quick=Q reps=R       run header
#   INFO alloc=A version=V | error=E      one per allocator
#   BENCH alloc=A workload=W key=value... one per successful run
#   SERVICE what=attach|stats_rtt_idle|stats_rtt n=N median_us=.. p99_us=.. ...
#                                         one per attach_latency run and figure
#   FAIL alloc=A workload=W reason=...    a run that crashed, failed or hung
#                                         (W also a SERVICE what, A shmheap-api)
#   VERIFY alloc=shmheap-api rc=R ...     shmheapctl verify after the runs
#   INSNS alloc=A workload=W1|W2 ops=N per_op=X
#                                         callgrind's instructions per W1 pair / W2 op
#
# Each figure is the median of its runs; a (workload, allocator) with any
# FAIL line is "fail" in the table and null in the JSON. The service figures
# are the medians, over the runs, of each run's median and of each run's p99.

function kv(key,    i) {
    for (i = 2; i <= NF; i++)
        if (index($i, key "=") == 1)
            return substr($i, length(key) + 2)
    return ""
}

function push(k, v) {
    cnt[k]++
    val[k, cnt[k]] = v + 0
}

function median(k,    n, i, j, t, s) {
    n = cnt[k] + 0
    if (n == 0)
        return ""
    for (i = 1; i <= n; i++)
        s[i] = val[k, i]
    for (i = 2; i <= n; i++) {
        t = s[i]
        for (j = i - 1; j >= 1 && s[j] > t; j--)
            s[j + 1] = s[j]
        s[j + 1] = t
    }
    if (n % 2)
        return s[(n + 1) / 2]
    return (s[n / 2] + s[n / 2 + 1]) / 2
}

# The figure for workload w, allocator a, metric m: a number, "fail" or "".
function fig(w, a, m) {
    if ((w, a) in failed)
        return "fail"
    return median(w SUBSEP a SUBSEP m)
}

function cell(v, ref, fmt, scale,    s) {
    if (v == "")
        return "-"
    if (v == "fail")
        return "fail"
    s = sprintf(fmt, v * scale)
    if (ref != "" && ref != "fail" && ref > 0)
        s = s sprintf(" (x%.2f)", v / ref)
    return s
}

function row(label, w, m, fmt, scale,    i, a, ref, mi, line) {
    ref = fig(w, "shmheap", m)
    line = sprintf("%-16s", label)
    for (i = 1; i <= na; i++) {
        a = A[i]
        line = line sprintf("%-15s", cell(fig(w, a, m), a == "shmheap" ? "" : ref, fmt, scale))
    }
    mi = fig(w, "mimalloc", m)
    if (ref != "" && ref != "fail" && mi != "" && mi != "fail" && mi > 0)
        line = line sprintf("x%.2f", ref / mi)
    else
        line = line "-"
    print line
}

# A service figure (what: attach, stats_rtt_idle, stats_rtt; m: median, p99, mops).
function svc(what, m) {
    if ((what, "shmheap-api") in failed)
        return "fail"
    return median("svc" SUBSEP what SUBSEP m)
}

# a / b, or "" when either is missing or failed.
function ratio(a, b) {
    if (a == "" || a == "fail" || b == "" || b == "fail" || b <= 0)
        return ""
    return a / b
}

function fmt_or(v, fmt, none) {
    return (v == "" || v == "fail") ? (v == "fail" ? "fail" : none) : sprintf(fmt, v)
}

function us(v) {
    return (v == "" || v == "fail") ? (v == "fail" ? "fail" : "-") : sprintf("%.1f us", v)
}

function jnum(v, fmt) {
    return (v == "" || v == "fail") ? "null" : sprintf(fmt, v)
}

function jobj(w, m, fmt,    i, s) {
    s = "{"
    for (i = 1; i <= nj; i++)
        s = s sprintf("%s\"%s\": %s", i > 1 ? ", " : "", J[i], jnum(fig(w, J[i], m), fmt))
    return s "}"
}

function jinsns(w,    i, s) {
    s = "{"
    for (i = 1; i <= nj; i++)
        s = s sprintf("%s\"%s\": %s", i > 1 ? ", " : "", J[i],
                      (w, J[i]) in insns ? insns[w, J[i]] : "null")
    return s "}"
}

BEGIN {
    na = split(allocs, A, " ")
    nw = split(workloads, W, " ")
    # The JSON always names the five allocators, then any others run.
    nj = split("shmheap glibc mimalloc jemalloc tcmalloc", J, " ")
    for (i = 1; i <= na; i++) {
        if (A[i] == "shmheap-api")
            has_api = 1
        if (A[i] == "boost")
            has_boost = 1
        known = 0
        for (j = 1; j <= nj; j++)
            if (J[j] == A[i])
                known = 1
        if (!known)
            J[++nj] = A[i]
    }
}

/^# / {
    for (i = 2; i <= NF; i++) {
        if (index($i, "cpus=") == 1) cpus = substr($i, 6)
        if (index($i, "quick=") == 1) quick = substr($i, 7)
        if (index($i, "reps=") == 1) reps = substr($i, 6)
    }
    next
}

/^INFO / {
    a = kv("alloc")
    ver[a] = kv("version")
    if (ver[a] == "")
        ver[a] = "(" kv("error") ")"
    next
}

/^BENCH / {
    a = kv("alloc")
    w = kv("workload")
    if (w == "W3") {
        push(w SUBSEP a SUBSEP "tput1", kv("tput1"))
        push(w SUBSEP a SUBSEP "tput2", kv("tput2"))
        push(w SUBSEP a SUBSEP "scaling", kv("scaling"))
    } else {
        push(w SUBSEP a SUBSEP "ns", kv("ns_per_op"))
        push(w SUBSEP a SUBSEP "per_s", kv("per_s"))
    }
    next
}

/^SERVICE / {
    what = kv("what")
    push("svc" SUBSEP what SUBSEP "median", kv("median_us"))
    push("svc" SUBSEP what SUBSEP "p99", kv("p99_us"))
    if (kv("busy_mops") != "")
        push("svc" SUBSEP what SUBSEP "mops", kv("busy_mops"))
    svc_n[what] = kv("n")
    svc_runs[what]++
    next
}

/^INSNS / {
    if (kv("per_op") != "") {
        insns[kv("workload"), kv("alloc")] = kv("per_op")
        has_insns = 1
    }
    next
}

/^VERIFY / {
    verify_rc = kv("rc")
    verify_line = $0
    sub(/^VERIFY alloc=shmheap-api /, "", verify_line)
    next
}

/^FAIL / {
    a = kv("alloc")
    w = kv("workload")
    r = $0
    sub(/^.*reason=/, "", r)
    if (!((w, a) in failed)) {
        failed[w, a] = 1
        nwhy++
        why[nwhy] = sprintf("  %s %s: %s", a, w, r)
    }
    next
}

END {
    printf "\nshmheap benchmark: median of %s runs per figure, each run a fresh process" \
        " (%s CPUs%s)\n", reps, cpus, quick == "1" ? ", BENCH_QUICK" : ""
    s = ""
    for (i = 1; i <= na; i++)
        s = s sprintf("%s%s %s", i > 1 ? " | " : "", A[i], A[i] in ver ? ver[A[i]] : "?")
    print "versions: " s
    print ""
    line = sprintf("%-16s", "")
    for (i = 1; i <= na; i++)
        line = line sprintf("%-15s", A[i])
    print line "shm/mi"
    for (k = 1; k <= nw; k++) {
        w = W[k]
        if (w == "W1" || w == "W1c" || w == "W2") {
            row(w " ns/op", w, "ns", "%.1f", 1)
        } else if (w == "W4") {
            row("W4 ns/obj", w, "ns", "%.1f", 1)
            row("W4 Mobj/s", w, "per_s", "%.2f", 1e-6)
        } else if (w == "W3") {
            row("W3 1p Mops/s", w, "tput1", "%.1f", 1e-6)
            row("W3 2p Mops/s", w, "tput2", "%.1f", 1e-6)
            row("W3 2p/1p", w, "scaling", "%.2f", 1)
        }
    }
    if (has_insns) {
        for (k = 1; k <= 2; k++) {
            w = k == 1 ? "W1" : "W2"
            line = sprintf("%-16s", w " insn/op")
            for (i = 1; i <= na; i++)
                line = line sprintf("%-15s", (w, A[i]) in insns ? insns[w, A[i]] : "-")
            print line
        }
    }
    print ""
    print "(xR) = that allocator's figure / shmheap's; shm/mi = shmheap's / mimalloc's."
    print "ns rows: lower is faster, so x>1 means slower than shmheap. Mops, Mobj and"
    print "2p/1p rows: higher is better. W3 2p/1p is W3_scaling: the median of each run's"
    print "throughput_2proc / throughput_1proc (paired within a run), so not exactly the"
    print "ratio of the two medians above it."
    if (has_insns)
        print "insn/op rows: instructions per W1 pair and per W2 op, counted by callgrind (exact)."

    w3api = ratio(fig("W3", "shmheap-api", "tput2"), fig("W3", "shmheap", "tput2"))
    w3api1 = ratio(fig("W3", "shmheap-api", "tput1"), fig("W3", "shmheap", "tput1"))
    if (has_api) {
        print ""
        print "shmheap-api: the same workloads through libshmheap.a (shmheap_malloc/shmheap_free),"
        print "each run a fresh process attached to one shmheapd (W3, W4: 2 attached processes)."
        printf "  W3 throughput, shmheap-api / shmheap: 2p %s, 1p %s   (W3_api_vs_core, 2p; goal >= 0.90)\n",
            fmt_or(w3api, "%.3f", "-"), fmt_or(w3api1, "%.3f", "-")
        printf "  attach latency, shmheap_attach to first malloc returned: median %s, p99 %s\n",
            us(svc("attach", "median")), us(svc("attach", "p99"))
        if (svc_runs["attach"] && svc("attach", "median") != "fail")
            printf "      (%s attaches per run; medians over %d runs)\n", svc_n["attach"],
                svc_runs["attach"]
        printf "  stats round trip, no other client: median %s, p99 %s\n",
            us(svc("stats_rtt_idle", "median")), us(svc("stats_rtt_idle", "p99"))
        printf "  stats round trip, 2 clients busy allocating: median %s, p99 %s\n",
            us(svc("stats_rtt", "median")), us(svc("stats_rtt", "p99"))
        if (svc_runs["stats_rtt"] && svc("stats_rtt", "median") != "fail")
            printf "      (%s requests per run; medians over %d runs; the 2 clients did %s Mpairs/s)\n",
                svc_n["stats_rtt"], svc_runs["stats_rtt"], fmt_or(svc("stats_rtt", "mops"), "%.1f", "-")
        if (verify_line != "")
            printf "  heap after the runs (shmheapctl verify): %s\n", verify_rc == "0" ? "consistent" : verify_line
    }
    bw3 = ratio(fig("W3", "shmheap", "tput2"), fig("W3", "boost", "tput2"))
    bw4 = ratio(fig("W4", "shmheap", "per_s"), fig("W4", "boost", "per_s"))
    if (has_boost) {
        print ""
        print "boost: Boost.Interprocess managed_shared_memory (rbtree_best_fit, one process-shared"
        print "mutex per segment); W3 and W4 in 2 processes on one segment, as shmheap's."
        printf "  shmheap / boost: W3 2p throughput x%s, W4 objects/s x%s\n",
            fmt_or(bw3, "%.1f", "-"), fmt_or(bw4, "%.1f", "-")
    }
    if (nwhy) {
        print ""
        print "failed:"
        for (i = 1; i <= nwhy; i++)
            print why[i]
    }

    printf "{\n" > json
    printf "  \"W1\": %s,\n", jobj("W1", "ns", "%.3f") > json
    printf "  \"W1c\": %s,\n", jobj("W1c", "ns", "%.3f") > json
    printf "  \"W2\": %s,\n", jobj("W2", "ns", "%.3f") > json
    printf "  \"W4\": %s,\n", jobj("W4", "per_s", "%.0f") > json
    # The issue's shape: W3_scaling is shmheap's number; every allocator's
    # is under W3_scaling_all.
    printf "  \"W3_scaling\": %s,\n", jnum(fig("W3", "shmheap", "scaling"), "%.4f") > json
    printf "  \"W3_scaling_all\": %s,\n", jobj("W3", "scaling", "%.4f") > json
    printf "  \"W3_tput2\": %s,\n", jobj("W3", "tput2", "%.0f") > json
    printf "  \"W3_scaling_shmheap\": %s,\n", jnum(fig("W3", "shmheap", "scaling"), "%.4f") > json
    printf "  \"W3_scaling_shmheap_api\": %s,\n", jnum(fig("W3", "shmheap-api", "scaling"), "%.4f") > json
    printf "  \"W3_api_vs_core\": %s,\n", jnum(w3api, "%.4f") > json
    printf "  \"W3_api_vs_core_1p\": %s,\n", jnum(w3api1, "%.4f") > json
    printf "  \"attach_latency_us\": {\"median\": %s, \"p99\": %s},\n",
        jnum(svc("attach", "median"), "%.1f"), jnum(svc("attach", "p99"), "%.1f") > json
    printf "  \"stats_rtt_us\": {\"median\": %s, \"p99\": %s},\n",
        jnum(svc("stats_rtt", "median"), "%.1f"), jnum(svc("stats_rtt", "p99"), "%.1f") > json
    printf "  \"stats_rtt_idle_us\": {\"median\": %s, \"p99\": %s},\n",
        jnum(svc("stats_rtt_idle", "median"), "%.1f"), jnum(svc("stats_rtt_idle", "p99"), "%.1f") > json
    printf "  \"instructions_per_op\": {\"W1\": %s, \"W2\": %s},\n", jinsns("W1"), jinsns("W2") > json
    printf "  \"shmheap_vs_boost\": {\"W3\": %s, \"W4\": %s}\n", jnum(bw3, "%.3f"), jnum(bw4, "%.3f") > json
    printf "}\n" > json
    close(json)
    print ""
    print "wrote " json
}
