# The tables of bench/breakdown.sh from its runs.txt:
#   RUN <build> <figure> <value>      one run's figure (or an instruction count)
#   LINES <build> <function> <instructions per op> <L1 read misses per op>
#   FAIL <build> <workload>
# With bench/runs.awk before it (push, median, spread).

function fmt_spread(key,    v) {
    v = spread(key)
    return v == "" ? "-" : sprintf("%.2f", v)
}

function cell(key, fmt) {
    return cnt[key] ? sprintf(fmt, median(key)) : sprintf("%9s", "-")
}

$1 == "RUN" {
    if (!(($2) in seen)) {
        seen[$2] = 1
        order[++nb] = $2
    }
    push($2 SUBSEP $3, $4)
    next
}
$1 == "LINES" { lines[++nl] = $0; next }
$1 == "FAIL" { fails = fails "  failed: " $2 " " $3 "\n"; next }

END {
    split("W1 W1c W2", tw, " ")
    print ""
    print "1. Ablation (measurement builds, not safe): medians; time per pair in ns, W3 in Mops/s,"
    print "   W4 in M objects/s;"
    print "   x tcm: the build's median over tcmalloc's (above 1: slower)"
    printf "%-16s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "build", "insn W1", "insn W2",
        "W1", "x tcm", "W1c", "x tcm", "W2", "x tcm", "W3 1p", "W3 2p", "W4"
    for (b = 1; b <= nb; b++) {
        name = order[b]
        if (!((name SUBSEP "W1") in cnt))
            continue
        printf "%-16s %s %s", name, cell(name SUBSEP "insns_W1", "%9.1f"),
            cell(name SUBSEP "insns_W2", "%9.1f")
        for (t = 1; t <= 3; t++) {
            k = name SUBSEP tw[t]
            p = "tcmalloc" SUBSEP tw[t]
            printf " %s %9s", cell(k, "%9.1f"),
                (cnt[k] && cnt[p]) ? sprintf("%.2f", median(k) / median(p)) : "-"
        }
        printf " %s %s %s\n", cell(name SUBSEP "W3_1p", "%9.1f"), cell(name SUBSEP "W3_2p", "%9.1f"),
            cell(name SUBSEP "W4", "%9.2f")
    }
    print "   spread (max/min over the runs):"
    for (b = 1; b <= nb; b++) {
        name = order[b]
        if (!((name SUBSEP "W1") in cnt))
            continue
        printf "%-16s", name
        split("W1 W1c W2 W3_1p W3_2p W4", sf, " ")
        for (t = 1; t <= 6; t++)
            printf " %s %s", sf[t], fmt_spread(name SUBSEP sf[t])
        printf "\n"
    }

    print ""
    print "2. Sharing: W3 with both processes on one heap or each on its own; Mops/s, medians"
    printf "%-16s %9s %9s %9s %9s\n", "run", "W3 1p", "W3 2p", "2p/1p", "spread 2p"
    for (b = 1; b <= nb; b++) {
        name = order[b]
        if (name !~ /^(shared|private)-|^tcmalloc-w3$/)
            continue
        k1 = name SUBSEP "W3_1p"
        k2 = name SUBSEP "W3_2p"
        printf "%-16s %s %s %9s %9s\n", name, cell(k1, "%9.1f"), cell(k2, "%9.1f"),
            (cnt[k1] && cnt[k2] && median(k1) > 0) ? sprintf("%.2f", median(k2) / median(k1)) : "-",
            fmt_spread(k2)
    }

    print ""
    print "3. Lines: per W2 op, instructions and L1 data read misses (cachegrind), by function"
    printf "%-16s %-48s %9s %9s\n", "build", "function", "insns", "D1 rd miss"
    for (i = 1; i <= nl; i++) {
        split(lines[i], f, " ")
        printf "%-16s %-48s %9s %9s\n", f[2], f[3], f[4], f[5]
    }
    if (fails != "")
        printf "\n%s", fails
}
