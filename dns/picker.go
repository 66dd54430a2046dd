package dns

import "sync/atomic"

// pickGroup is one revision's records in an address set: n records from
// index first, taking weight of the traffic (0: unweighted).
type pickGroup struct {
	weight   uint32
	first, n int
}

// picker chooses which record of an address set goes first in each
// answer: resolvers and clients mostly use the first address, so that
// choice is how DNS spreads load and follows canary weights.
//
// With one revision (or none weighted) it rotates through the records in
// turn. With several weighted revisions it walks a smooth weighted round
// robin over the revisions: every cycle of len(seq) answers gives each
// revision exactly weight/gcd first places, spread evenly through the cycle
// (nginx's SWRR), and within a revision the first place rotates through its
// records. Over N answers a revision's share of first places is therefore
// its weight to within len(seq)/N, whatever the interleaving of clients.
//
// The state is one atomic counter per set: no lock, no allocation.
type picker struct {
	n      uint32      // records in the set
	seq    []uint16    // group index per step of one cycle; nil: plain rotation
	occ    []uint32    // how often seq[i]'s group came before step i in the cycle
	groups []pickGroup // by index in seq
	per    []uint32    // first places per cycle of each group
	count  atomic.Uint32
}

// newPicker returns the picker of a set of records made of groups, or nil
// when the set has fewer than two records (nothing to choose).
func newPicker(groups []pickGroup) *picker {
	total := 0
	for _, g := range groups {
		total += g.n
	}
	if total < 2 {
		return nil
	}
	p := &picker{n: uint32(total)}
	if len(groups) < 2 {
		return p
	}
	weights := make([]uint32, len(groups))
	var g uint32
	for i, gr := range groups {
		weights[i] = gr.weight
		g = gcd(g, gr.weight)
	}
	if g == 0 {
		return p // unweighted: rotate over everything
	}
	var sum uint64
	for i := range weights {
		weights[i] /= g
		sum += uint64(weights[i])
	}
	// Weights are percentages, so a cycle is at most 100 steps; cap it in
	// case someone hands in huge co-prime weights.
	const maxCycle = 1000
	if sum > maxCycle {
		var s uint64
		for i := range weights {
			w := uint64(weights[i]) * maxCycle / sum
			if w == 0 && weights[i] > 0 {
				w = 1
			}
			weights[i] = uint32(w)
			s += w
		}
		sum = s
	}
	p.groups = groups
	p.per = weights
	p.seq = make([]uint16, 0, sum)
	p.occ = make([]uint32, 0, sum)
	seen := make([]uint32, len(groups))
	cur := make([]int64, len(groups))
	for range sum {
		best := -1
		for i, w := range weights {
			if w == 0 {
				continue
			}
			cur[i] += int64(w)
			if best < 0 || cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(sum)
		p.seq = append(p.seq, uint16(best))
		p.occ = append(p.occ, seen[best])
		seen[best]++
	}
	return p
}

// next returns the index of the record to put first in the next answer.
func (p *picker) next() int {
	k := p.count.Add(1) - 1
	return p.at(k)
}

// at is the choice for the k-th answer (k from 0).
func (p *picker) at(k uint32) int {
	if p.seq == nil {
		return int(k % p.n)
	}
	l := uint32(len(p.seq))
	pos, cycle := k%l, uint64(k/l)
	gi := p.seq[pos]
	gr := p.groups[gi]
	turn := cycle*uint64(p.per[gi]) + uint64(p.occ[pos])
	return gr.first + int(turn%uint64(gr.n))
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
