# Turns bench/run_bench.sh's runs file into the table (stdout) and the JSON
# file. Plain POSIX awk (Debian's default is mawk): no asort, no gensub.
#
# Variables: allocs, workloads (space-separated lists), json (output path).
#
# Input lines:
#   # ... cpus=N ... quick=Q reps=R       run header
#   INFO alloc=A version=V | error=E      one per allocator
#   BENCH alloc=A workload=W key=value... one per successful run (W3 also
#                                         tput4=, tput8=: the curve; W5b
#                                         held_bytes=, floor_bytes=, ...)
#   SERVICE what=attach|stats_rtt_idle|stats_rtt n=N median_us=.. p99_us=.. ...
#                                         one per attach_latency run and figure
#   FAIL alloc=A workload=W reason=...    a run that crashed, failed or hung
#                                         (W also a SERVICE what, A shmheap-api;
#                                         or W3_<N>p: one point of W3's curve)
#   VERIFY alloc=shmheap-api rc=R ...     shmheapctl verify after the runs
#   INSNS alloc=A workload=W1|W2 ops=N per_op=X
#                                         callgrind's instructions per W1 pair / W2 op
#
# Each figure is the median of its runs; a (workload, allocator) with any
# FAIL line is "fail" in the table and null in the JSON. Beside the median,
# each row gives shmheap's figure over the best per-process allocator's
# (glibc, mimalloc, jemalloc, tcmalloc) and a second table the spread of
# the runs (max / min) per figure: how noisy the machine was. The service figures
# are the medians, over the runs, of each run's median and of each run's p99.

function kv(key,    i) {
    for (i = 2; i <= NF; i++)
        if (index($i, key "=") == 1)
            return substr($i, length(key) + 2)
    return ""
}

# push, median and spread: bench/runs.awk.

# True when the (workload, allocator) failed; a point of W3's curve
# (metric tputN) fails on its own, as workload W3_<N>p.
function is_failed(w, a, m) {
    if ((w, a) in failed)
        return 1
    return w == "W3" && m ~ /^tput[0-9]+$/ && (("W3_" substr(m, 5) "p"), a) in failed
}

# The figure for workload w, allocator a, metric m: a number, "fail" or "".
function fig(w, a, m) {
    if (is_failed(w, a, m))
        return "fail"
    return median(w SUBSEP a SUBSEP m)
}

# The best per-process allocator's figure (hib: higher is better) for a
# row; sets best_name. "" when none has one.
function best_peer(w, m, hib,    i, v, b) {
    b = ""
    best_name = ""
    for (i = 1; i <= np; i++) {
        v = fig(w, P[i], m)
        if (v == "" || v == "fail")
            continue
        if (b == "" || (hib ? v > b : v < b)) {
            b = v
            best_name = P[i]
        }
    }
    return b
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

function row(label, w, m, fmt, scale, hib,    i, a, ref, mi, line, b) {
    ref = fig(w, "shmheap", m)
    line = sprintf("%-16s", label)
    for (i = 1; i <= na; i++) {
        a = A[i]
        line = line sprintf("%-15s", cell(fig(w, a, m), a == "shmheap" ? "" : ref, fmt, scale))
    }
    mi = fig(w, "mimalloc", m)
    if (ref != "" && ref != "fail" && mi != "" && mi != "fail" && mi > 0)
        line = line sprintf("%-8s", sprintf("x%.2f", ref / mi))
    else
        line = line sprintf("%-8s", "-")
    b = best_peer(w, m, hib)
    if (ref != "" && ref != "fail" && b != "" && b > 0)
        line = line sprintf("x%.2f %s", ref / b, best_name)
    else
        line = line "-"
    print line
}

# The spread row: max / min of each allocator's runs of that figure.
function spread_row(label, w, m,    i, a, line, v) {
    line = sprintf("%-16s", label)
    for (i = 1; i <= na; i++) {
        a = A[i]
        v = is_failed(w, a, m) ? "fail" : spread(w SUBSEP a SUBSEP m)
        line = line sprintf("%-15s", v == "" ? "-" : v == "fail" ? "fail" : sprintf("%.2f", v))
        if (v != "" && v != "fail") {
            nspread++
            if (v > worst_spread) {
                worst_spread = v
                worst_what = label " " a
            }
        }
    }
    print line
}

# The table's rows: label, workload, metric, format, scale, higher is better.
function add_row(label, w, m, fmt, scale, hib) {
    nr++
    RL[nr] = label
    RW[nr] = w
    RM[nr] = m
    RF[nr] = fmt
    RSCALE[nr] = scale
    RH[nr] = hib
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

# {"alloc": {"1": tput, "2": ..., "4": ..., "8": ...}, ...}: W3's curve.
function jcurve(    i, k, s, t) {
    s = "{"
    for (i = 1; i <= nj; i++) {
        t = ""
        for (k = 1; k <= 8; k *= 2)
            t = t sprintf("%s\"%d\": %s", k > 1 ? ", " : "", k, jnum(fig("W3", J[i], "tput" k), "%.0f"))
        s = s sprintf("%s\"%s\": {%s}", i > 1 ? ", " : "", J[i], t)
    }
    return s "}"
}

# {"alloc": {"held_mib": .., "floor_mib": .., "ratio": .., "before_release_mib": ..}, ...}
function jw5b(    i, s) {
    s = "{"
    for (i = 1; i <= nj; i++)
        s = s sprintf("%s\"%s\": {\"held_mib\": %s, \"floor_mib\": %s, \"ratio\": %s, " \
                      "\"before_release_mib\": %s}", i > 1 ? ", " : "", J[i],
                      jnum(fig("W5b", J[i], "held"), "%.1f"), jnum(fig("W5b", J[i], "floor"), "%.1f"),
                      jnum(fig("W5b", J[i], "ratio"), "%.4f"), jnum(fig("W5b", J[i], "before"), "%.1f"))
    return s "}"
}

# {"row label": {"peer": name, "shmheap": x, "best": y, "shmheap_over_best": r}, ...}
function jbest(    r, s, v, b, n) {
    s = "{"
    n = 0
    for (r = 1; r <= nr; r++) {
        v = fig(RW[r], "shmheap", RM[r])
        b = best_peer(RW[r], RM[r], RH[r])
        s = s sprintf("%s\"%s\": {\"peer\": %s, \"shmheap\": %s, \"best\": %s, \"shmheap_over_best\": %s}",
                      n++ ? ", " : "", RL[r], best_name == "" ? "null" : "\"" best_name "\"",
                      jnum(v, "%.6g"), jnum(b, "%.6g"), jnum(ratio(v, b), "%.4f"))
    }
    return s "}"
}

# {"row label": {"alloc": max/min, ...}, ...}
function jspread(    r, i, s, t, v, n) {
    s = "{"
    n = 0
    for (r = 1; r <= nr; r++) {
        t = ""
        for (i = 1; i <= nj; i++) {
            v = is_failed(RW[r], J[i], RM[r]) ? "" : spread(RW[r] SUBSEP J[i] SUBSEP RM[r])
            t = t sprintf("%s\"%s\": %s", i > 1 ? ", " : "", J[i], jnum(v, "%.4f"))
        }
        s = s sprintf("%s\"%s\": {%s}", n++ ? ", " : "", RL[r], t)
    }
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
    np = 0 # the per-process allocators of this run, for the best-peer column
    for (i = 1; i <= na; i++)
        if (A[i] ~ /^(glibc|mimalloc|jemalloc|tcmalloc)$/)
            P[++np] = A[i]
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
        # The curve's points beyond 2 ("fail" ones come with a FAIL line).
        for (k = 4; k <= 8; k *= 2)
            if (kv("tput" k) ~ /^[0-9.]+$/)
                push(w SUBSEP a SUBSEP "tput" k, kv("tput" k))
    } else if (w == "W5b") {
        push(w SUBSEP a SUBSEP "held", kv("held_bytes") / 1048576)
        push(w SUBSEP a SUBSEP "before", kv("before_bytes") / 1048576)
        push(w SUBSEP a SUBSEP "floor", kv("floor_bytes") / 1048576)
        push(w SUBSEP a SUBSEP "ratio", kv("ratio"))
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
    for (k = 1; k <= nw; k++) {
        w = W[k]
        if (w == "W1" || w == "W1c" || w == "W2") {
            add_row(w " ns/op", w, "ns", "%.1f", 1, 0)
        } else if (w == "W4") {
            add_row("W4 ns/obj", w, "ns", "%.1f", 1, 0)
            add_row("W4 Mobj/s", w, "per_s", "%.2f", 1e-6, 1)
        } else if (w == "W3") {
            add_row("W3 1p Mops/s", w, "tput1", "%.1f", 1e-6, 1)
            add_row("W3 2p Mops/s", w, "tput2", "%.1f", 1e-6, 1)
            add_row("W3 4p Mops/s", w, "tput4", "%.1f", 1e-6, 1)
            add_row("W3 8p Mops/s", w, "tput8", "%.1f", 1e-6, 1)
            add_row("W3 2p/1p", w, "scaling", "%.2f", 1, 1)
        } else if (w == "W5b") {
            add_row("W5b held MiB", w, "held", "%.1f", 1, 0)
            add_row("W5b held/floor", w, "ratio", "%.3f", 1, 0)
            add_row("W5b floor MiB", w, "floor", "%.1f", 1, 0)
            add_row("W5b pre-rel MiB", w, "before", "%.1f", 1, 0)
        } else if (w == "W6") {
            add_row("W6 ns/obj", w, "ns", "%.1f", 1, 0)
            add_row("W6 Mobj/s", w, "per_s", "%.2f", 1e-6, 1)
        }
    }
    line = sprintf("%-16s", "")
    for (i = 1; i <= na; i++)
        line = line sprintf("%-15s", A[i])
    print line sprintf("%-8s", "shm/mi") "shm/best peer"
    for (r = 1; r <= nr; r++)
        row(RL[r], RW[r], RM[r], RF[r], RSCALE[r], RH[r])
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
    print "(xR) = that allocator's figure / shmheap's; shm/mi = shmheap's / mimalloc's;"
    print "shm/best peer = shmheap's / the best of glibc, mimalloc, jemalloc and tcmalloc on"
    print "that row, and which it is. ns, MiB and held/floor rows: lower is better (x>1 in"
    print "shm/best: shmheap behind). Mops, Mobj and 2p/1p rows: higher is better (x<1 in"
    print "shm/best: shmheap behind). W3 2p/1p is W3_scaling: the median of each run's"
    print "throughput_2proc / throughput_1proc (paired within a run), so not exactly the"
    print "ratio of the two medians above it. W3 Np: N processes on one heap (shmheap,"
    print "shmheap-api, boost) or N private heaps; N > 2 split the 2p total over N."
    print "W5b: MiB of memory held after the release call (shared memory for shmheap,"
    print "RssAnon less the baseline for the others) and its ratio to the floor, the 4 KiB"
    print "pages holding a live byte; pre-rel: the same before the release call. W6: objects"
    print "allocated in one of 4 pipeline stages and freed in the next, per second;"
    print "processes for shmheap, shmheap-api and boost, threads for the others."
    if (has_insns)
        print "insn/op rows: instructions per W1 pair and per W2 op, counted by callgrind (exact)."

    print ""
    print "spread over the runs, max/min (1.00: every run gave the same figure):"
    line = sprintf("%-16s", "")
    for (i = 1; i <= na; i++)
        line = line sprintf("%-15s", A[i])
    print line
    for (r = 1; r <= nr; r++)
        spread_row(RL[r], RW[r], RM[r])
    if (nspread)
        printf "widest: x%.2f (%s)\n", worst_spread, worst_what

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
    bw6 = ratio(fig("W6", "shmheap", "per_s"), fig("W6", "boost", "per_s"))
    bw6api = ratio(fig("W6", "shmheap-api", "per_s"), fig("W6", "boost", "per_s"))
    if (has_boost) {
        print ""
        print "boost: Boost.Interprocess managed_shared_memory (rbtree_best_fit, one process-shared"
        print "mutex per segment); W3 and W4 in 2 processes on one segment, as shmheap's."
        printf "  shmheap / boost: W3 2p throughput x%s, W4 objects/s x%s, W6 objects/s x%s" \
            " (shmheap-api x%s)\n", fmt_or(bw3, "%.1f", "-"), fmt_or(bw4, "%.1f", "-"),
            fmt_or(bw6, "%.1f", "-"), fmt_or(bw6api, "%.1f", "-")
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
    printf "  \"W5b\": %s,\n", jw5b() > json
    printf "  \"W6\": %s,\n", jobj("W6", "per_s", "%.0f") > json
    printf "  \"W3_curve\": %s,\n", jcurve() > json
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
    printf "  \"best_peer\": %s,\n", jbest() > json
    printf "  \"spread\": %s,\n", jspread() > json
    printf "  \"shmheap_vs_boost\": {\"W3\": %s, \"W4\": %s, \"W6\": %s}\n", jnum(bw3, "%.3f"),
        jnum(bw4, "%.3f"), jnum(bw6, "%.3f") > json
    printf "}\n" > json
    close(json)
    print ""
    print "wrote " json
}
