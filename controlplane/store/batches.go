package store

// commitCost is what one instance change takes of a transaction (the
// encoding it measures is kept for the write).
func commitCost(ch *InstanceChange) (ops, bytes int) {
	key := len(instanceKey(ch.Instance.ID))
	if ch.Delete {
		return 2, 2 * key
	}
	return 1, key + len(ch.encode())
}

// Batches splits instance changes into transactions that each fit
// etcd's limits (MaxOpsPerCommit operations, MaxBytesPerCommit bytes).
// A service's changes are cut into chunks that fit; chunks of several
// services share a transaction, unless perService, where each transaction
// holds one service's changes only (the retry after a shared one failed:
// one service's trouble never holds up another's). Order is kept within a
// service; services come in the order they first appear. A change too
// large for any transaction is a batch alone (its commit fails and names
// it).
func Batches(changes []InstanceChange, perService bool) [][]InstanceChange {
	var order []string
	byService := map[string][]InstanceChange{}
	for _, ch := range changes {
		k := ch.Instance.Namespace + "/" + ch.Instance.Service
		if _, ok := byService[k]; !ok {
			order = append(order, k)
		}
		byService[k] = append(byService[k], ch)
	}
	var out [][]InstanceChange
	var batch []InstanceChange
	ops, bytes := 0, 0
	flush := func() {
		if len(batch) > 0 {
			out = append(out, batch)
		}
		batch, ops, bytes = nil, 0, 0
	}
	for _, k := range order {
		if perService {
			flush()
		}
		for _, ch := range byService[k] {
			o, b := commitCost(&ch)
			if ops+o > MaxOpsPerCommit || bytes+b > MaxBytesPerCommit {
				flush()
			}
			batch = append(batch, ch)
			ops, bytes = ops+o, bytes+b
		}
	}
	flush()
	return out
}

// FitsCommit reports whether an instance change, with extra operations
// and bytes already in the transaction, stays within one commit's
// limits.
func FitsCommit(ch *InstanceChange, ops, bytes int) (ok bool, newOps, newBytes int) {
	o, b := commitCost(ch)
	return ops+o <= MaxOpsPerCommit && bytes+b <= MaxBytesPerCommit, ops + o, bytes + b
}
